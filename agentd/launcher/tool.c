/*
 * `agentd tool`: run CMD as one tool call in a cgroup of its own.
 *
 * Race-free placement: we fork a child that waits on a pipe, ask the daemon to move
 * that child into a new tool-call cgroup, and only after the daemon's reply let the
 * child exec CMD. Everything CMD ever forks is therefore born inside the cgroup.
 * The daemon trusts the kernel, not us: it checks with SO_PEERCRED that the child's
 * parent is the peer and that both are in the same agent.
 *
 * The parent stays as a small supervisor: it forwards signals, prints notices the
 * daemon pushes while CMD runs (throttled, frozen, ...), reaps CMD with its rusage,
 * reports the end of the call, and exits with CMD's status.
 *
 * A tool call must never fail because agentd is missing: with no daemon (or a daemon
 * that says "unavailable") CMD runs as a plain child of the agent, after one warning.
 */
#include "launcher.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The daemon refuses request lines over 256 KiB (agentd/api/protocol.py). A huge
 * `bash -c SCRIPT` is shortened here so the call is still placed and logged. */
#define ARGV_MAX_ITEMS 1024
#define ARG_MAX_BYTES (32 * 1024)
#define ARGV_BUDGET (192 * 1024)
#define REPLY_MAX_BYTES (1024 * 1024)

/* The daemon may be restarting: a short wait covers a socket being re-created, a
 * longer one at the end gives a restarted daemon time to re-adopt the call. */
#define CONNECT_BUDGET_MS 1000
#define RECONNECT_BUDGET_MS 3000
/* The end of a call is bookkeeping; an unresponsive daemon must not hold the agent. */
#define DONE_REPLY_TIMEOUT_MS 10000

static const int fwd_signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
#define NFWD (sizeof fwd_signals / sizeof fwd_signals[0])

static volatile sig_atomic_t g_child;  /* pid to forward signals to, 0 when none */
static int g_wake[2] = {-1, -1};       /* self-pipe: SIGCHLD wakes the poll loop */

/* What we inherited, so CMD gets exactly that back (a `cmd &` from a script runs
 * with SIGINT ignored, and that must survive our passing through). */
struct saved_signals {
    struct sigaction fwd[NFWD], chld, pipe;
    sigset_t mask, ours;
};

struct conn {
    int fd;
    struct buf in;
    size_t off;
};

enum ev { EV_LINE, EV_CHILD, EV_CLOSED, EV_TIMEOUT };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- signals ---- */

static void on_forward(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    /* The terminal (Ctrl-C, Ctrl-\, hangup, resize) signals the whole foreground
     * process group, CMD included: forwarding would deliver it twice, and many tools
     * take a second Ctrl-C as "abort without cleaning up". */
    if (si && si->si_code == SI_KERNEL)
        return;
    pid_t c = g_child;
    if (c > 0)
        kill(c, sig);
}

static void on_child(int sig)
{
    (void)sig;
    int e = errno;
    ssize_t r = write(g_wake[1], "c", 1);
    (void)r;
    errno = e;
}

/* Install our handlers with the signals blocked; the caller unblocks after fork so
 * the child can restore the inherited state before any signal reaches it. */
static void signals_take(struct saved_signals *s)
{
    struct sigaction sa;
    sigemptyset(&s->ours);
    for (size_t i = 0; i < NFWD; i++)
        sigaddset(&s->ours, fwd_signals[i]);
    sigaddset(&s->ours, SIGCHLD);
    sigprocmask(SIG_BLOCK, &s->ours, &s->mask);

    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_sigaction = on_forward;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    for (size_t i = 0; i < NFWD; i++) {
        sigaction(fwd_signals[i], NULL, &s->fwd[i]);
        /* Ignored on entry: whoever started us wants it ignored, CMD will ignore it too. */
        if (!(s->fwd[i].sa_flags & SA_SIGINFO) && s->fwd[i].sa_handler == SIG_IGN)
            continue;
        sigaction(fwd_signals[i], &sa, NULL);
    }
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_child;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, &s->chld);  /* even if inherited as SIG_IGN: we must reap */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;            /* a dead peer or child is an error code, not death */
    sigaction(SIGPIPE, &sa, &s->pipe);
}

static void signals_give_back(const struct saved_signals *s)
{
    for (size_t i = 0; i < NFWD; i++)
        sigaction(fwd_signals[i], &s->fwd[i], NULL);
    sigaction(SIGCHLD, &s->chld, NULL);
    sigaction(SIGPIPE, &s->pipe, NULL);
    sigprocmask(SIG_SETMASK, &s->mask, NULL);
}

/* ---- I/O ---- */

/*
 * Keep our descriptors above stdio. If the agent started us with fd 0-2 closed, a
 * socket or pipe would land there, and CMD (or our own warnings) would read or write
 * the daemon connection. CMD must see its stdio exactly as inherited, closed or not.
 */
static int high_fd(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return h;
}

static int pipe_high(int p[2], int flags)
{
    if (pipe2(p, flags) < 0)
        return -1;
    p[0] = high_fd(p[0]);
    p[1] = high_fd(p[1]);
    return p[0] < 0 || p[1] < 0 ? -1 : 0;  /* a dup shares O_NONBLOCK with the original */
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int conn_send(struct conn *c, const struct buf *b)
{
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = send(c->fd, b->p + off, b->len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        off += (size_t)n;
    }
    return 0;
}

static void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->in.len = c->off = 0;
}

/* Retries only the errors a restarting daemon causes; anything else means no daemon. */
static int connect_retry(const char *path, int budget_ms, int *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        *err = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    double deadline = now_s() + budget_ms / 1000.0;
    long delay_ms = 5;
    for (;;) {
        int fd = high_fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (fd < 0) {
            *err = errno;
            return -1;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            return fd;
        int e = errno;
        close(fd);
        double left = deadline - now_s();
        if (e == EINTR)
            continue;
        if (!(e == ECONNREFUSED || e == ENOENT || e == EAGAIN) || left <= 0) {
            *err = e;
            return -1;
        }
        long ms = delay_ms < left * 1000 ? delay_ms : (long)(left * 1000) + 1;
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        if (delay_ms < 200)
            delay_ms *= 2;
    }
}

/*
 * Wait for the next reply line (if the connection is open) or a SIGCHLD wake-up.
 * *line points into c->in and stays valid until the next call. timeout_ms < 0: none.
 */
static enum ev next_event(struct conn *c, int timeout_ms, char **line, size_t *len)
{
    double deadline = now_s() + timeout_ms / 1000.0;
    for (;;) {
        if (c->fd >= 0 && c->in.len > c->off) {
            char *start = c->in.p + c->off;
            char *nl = memchr(start, '\n', c->in.len - c->off);
            if (nl) {
                *line = start;
                *len = (size_t)(nl - start);
                c->off = (size_t)(nl - c->in.p) + 1;
                return EV_LINE;
            }
            memmove(c->in.p, start, c->in.len - c->off);
            c->in.len -= c->off;
            c->off = 0;
            if (c->in.len > REPLY_MAX_BYTES)
                return EV_CLOSED;  /* not our protocol; stop listening */
        }
        int wait_ms = -1;
        if (timeout_ms >= 0) {
            double left = deadline - now_s();
            if (left <= 0)
                return EV_TIMEOUT;
            wait_ms = (int)(left * 1000) + 1;
        }
        struct pollfd p[2] = {{g_wake[0], POLLIN, 0}, {c->fd, POLLIN, 0}};
        int n = poll(p, 2, wait_ms);
        if (n < 0 && errno != EINTR)
            return EV_CLOSED;
        if (n <= 0)
            continue;
        if (p[0].revents) {
            char drain[64];
            while (read(g_wake[0], drain, sizeof drain) > 0)
                ;
            return EV_CHILD;
        }
        if (p[1].revents) {
            char tmp[16384];
            ssize_t r = read(c->fd, tmp, sizeof tmp);
            if (r > 0)
                buf_add(&c->in, tmp, (size_t)r);
            else if (!(r < 0 && errno == EINTR))
                return EV_CLOSED;
        }
    }
}

/* ---- the child ---- */

void exec_cmd(char **cmd)
{
    execvp(cmd[0], cmd);
    int e = errno;
    fprintf(stderr, "agentd: %s: %s\n", cmd[0], strerror(e));
    _exit(e == ENOENT || e == ENOTDIR ? EXIT_NOTFOUND : EXIT_NOEXEC);
}

/* Wait for the go-ahead ("G" then KEY=VALUE\0 entries) and exec CMD. EOF without it
 * means the parent gave up or died: CMD must not run outside its cgroup. */
static void child_main(int gofd, const struct saved_signals *s, char **cmd)
{
    signals_give_back(s);
    struct buf in = {0};
    char tmp[4096];
    for (;;) {
        ssize_t n = read(gofd, tmp, sizeof tmp);
        if (n > 0)
            buf_add(&in, tmp, (size_t)n);
        else if (!(n < 0 && errno == EINTR))
            break;
    }
    close(gofd);
    if (in.len == 0 || in.p[0] != 'G')
        _exit(EXIT_AGENTD);
    for (size_t off = 1; off < in.len;) {
        char *kv = in.p + off;
        size_t n = strlen(kv);
        char *eq = strchr(kv, '=');
        if (eq) {
            *eq = '\0';
            setenv(kv, eq + 1, 1);
        }
        off += n + 1;
    }
    exec_cmd(cmd);
}

/* ---- requests ---- */

static void add_opt_str(struct buf *b, const char *key, const char *val, size_t max)
{
    buf_addf(b, ",\"%s\":", key);
    if (val)
        buf_json_str(b, val, max);
    else
        buf_adds(b, "null");
}

static void build_start(struct buf *b, pid_t pid, const struct tool_opts *o)
{
    buf_addf(b, "{\"v\":1,\"op\":\"tool_start\",\"pid\":%d,\"argv\":[", (int)pid);
    size_t start = b->len;
    for (size_t i = 0; o->cmd[i] && i < ARGV_MAX_ITEMS; i++) {
        size_t used = b->len - start;
        size_t left = used < ARGV_BUDGET ? ARGV_BUDGET - used : 0;
        size_t n = ARG_MAX_BYTES;
        if (n > left / 6)  /* an escaped byte takes at most 6 ("\u001f") */
            n = left / 6;
        if (n == 0 && i > 0)
            break;
        if (i)
            buf_addc(b, ',');
        buf_json_str(b, o->cmd[i], n);
    }
    buf_addc(b, ']');
    add_opt_str(b, "class", o->cls, 256);
    add_opt_str(b, "mem", o->mem, 256);
    add_opt_str(b, "intent", o->intent, 4096);
    char *cwd = getcwd(NULL, 0);  /* NULL when the directory was removed: send null */
    add_opt_str(b, "cwd", cwd, 4096);
    free(cwd);
    buf_adds(b, "}\n");
}

static void print_lines(const struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        fprintf(stderr, "%s\n", l->v[i]);
}

static void print_notice(const struct reply *r)
{
    const char *m = r->message ? r->message : r->notice;
    if (m)
        fprintf(stderr, "%s\n", m);
}

static int reap(pid_t pid, int *st, struct rusage *ru)
{
    for (;;) {
        pid_t r = wait4(pid, st, WNOHANG, ru);
        if (r == pid) {
            g_child = 0;  /* the pid may be reused from now on: forward nothing more */
            return 1;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {  /* cannot happen while we handle SIGCHLD; do not spin on it */
            g_child = 0;
            *st = EXIT_AGENTD << 8;
            return 1;
        }
        return 0;
    }
}

/* Shell convention, so callers see the same status as with CMD run directly. */
static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return EXIT_AGENTD;
}

/* ---- the end of the call ---- */

static void feedback(const char *result)
{
    if (!result || strcmp(result, "null") == 0)
        return;
    struct buf line = {0};
    buf_adds(&line, result);
    buf_addc(&line, '\n');
    const char *file = getenv("AGENTD_FEEDBACK_FILE");
    if (file && *file) {
        /* One write with O_APPEND: parallel tool calls never interleave lines. */
        int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 || write_all(fd, line.p, line.len) < 0)
            fprintf(stderr, "agentd: cannot write the tool-call result to %s: %s\n", file, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    const char *fds = getenv("AGENTD_FEEDBACK_FD");
    if (fds && *fds) {
        char *end;
        long fd = strtol(fds, &end, 10);
        if (*end || fd < 0 || fd > INT_MAX)
            fprintf(stderr, "agentd: AGENTD_FEEDBACK_FD=%s is not a file descriptor number\n", fds);
        else if (write_all((int)fd, line.p, line.len) < 0)
            fprintf(stderr, "agentd: cannot write the tool-call result to fd %ld: %s\n", fd, strerror(errno));
    }
    buf_free(&line);
}

static void report_done(struct conn *c, const char *path, const char *agent, const char *tool,
                        int st, double wall, const struct rusage *ru)
{
    struct buf b = {0};
    buf_adds(&b, "{\"v\":1,\"op\":\"tool_done\",\"agent\":");
    buf_json_str(&b, agent, SIZE_MAX);
    buf_adds(&b, ",\"tool\":");
    buf_json_str(&b, tool, SIZE_MAX);
    if (WIFSIGNALED(st))
        buf_addf(&b, ",\"status\":{\"signal\":%d}", WTERMSIG(st));
    else
        buf_addf(&b, ",\"status\":{\"exit\":%d}", WIFEXITED(st) ? WEXITSTATUS(st) : EXIT_AGENTD);
    buf_addf(&b, ",\"wall_s\":%.6f,\"utime_s\":%.6f,\"stime_s\":%.6f,\"maxrss_kb\":%ld}\n", wall,
             ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6, ru->ru_stime.tv_sec + ru->ru_stime.tv_usec / 1e6,
             ru->ru_maxrss);

    /* The connection may have died with a restarting daemon while CMD ran: the new
     * daemon re-adopts the call from cgroupfs and accepts its end on a new connection. */
    int sent = 0;
    for (int attempt = 0; attempt < 2 && !sent; attempt++) {
        if (c->fd < 0) {
            int err = 0;
            c->fd = connect_retry(path, RECONNECT_BUDGET_MS, &err);
            if (c->fd < 0) {
                fprintf(stderr, "agentd: cannot report the end of tool call %s to %s (%s)\n", tool, path,
                        strerror(err));
                buf_free(&b);
                return;
            }
        }
        if (conn_send(c, &b) == 0)
            sent = 1;
        else
            conn_close(c);
    }
    buf_free(&b);
    if (!sent) {
        fprintf(stderr, "agentd: cannot report the end of tool call %s to %s\n", tool, path);
        return;
    }
    double deadline = now_s() + DONE_REPLY_TIMEOUT_MS / 1000.0;
    for (;;) {
        char *line;
        size_t len;
        int left_ms = (int)((deadline - now_s()) * 1000);
        enum ev e = next_event(c, left_ms > 0 ? left_ms : 0, &line, &len);
        if (e == EV_CHILD)
            continue;
        if (e == EV_TIMEOUT) {
            fprintf(stderr, "agentd: no answer from the daemon about the end of tool call %s; carrying on\n", tool);
            return;
        }
        if (e == EV_CLOSED) {
            fprintf(stderr, "agentd: the daemon closed the connection before confirming tool call %s\n", tool);
            return;
        }
        struct reply r;
        int bad = reply_parse(line, len, &r) < 0;
        if (!bad && r.ok < 0) {
            print_notice(&r);
            reply_free(&r);
            continue;
        }
        if (bad)
            fprintf(stderr, "agentd: malformed reply from the daemon about tool call %s\n", tool);
        else if (r.ok == 0)
            fprintf(stderr, "agentd: %s\n", r.err_message ? r.err_message : r.err_code ? r.err_code : "error");
        else {
            print_lines(&r.messages);
            feedback(r.result);
        }
        reply_free(&r);
        return;
    }
}

/* ---- the whole call ---- */

static void __attribute__((noreturn)) fallback(const char *path, const char *why, char **cmd)
{
    fprintf(stderr, "agentd: no daemon at %s (%s): running %s without a tool-call cgroup\n", path, why, cmd[0]);
    exec_cmd(cmd);
}

struct call {
    const char *path;
    char **cmd;
    struct conn c;
    struct saved_signals ss;
    pid_t pid;
    int gofd;
};

/* Undo everything (the waiting child dies unplaced) so CMD can run as if we were not here. */
static void abandon(struct call *k)
{
    g_child = 0;
    kill(k->pid, SIGKILL);
    while (waitpid(k->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    conn_close(&k->c);
    close(k->gofd);
    signals_give_back(&k->ss);
    close(g_wake[0]);
    close(g_wake[1]);
}

static void __attribute__((noreturn)) abandon_and_fallback(struct call *k, const char *why)
{
    abandon(k);
    fallback(k->path, why, k->cmd);
}

int tool_run(const struct tool_opts *o)
{
    const char *env = getenv("AGENTD_SOCKET");
    struct call k = {.path = env && *env ? env : DEFAULT_SOCKET, .cmd = o->cmd, .c = {.fd = -1}};
    int err = 0;
    k.c.fd = connect_retry(k.path, CONNECT_BUDGET_MS, &err);
    if (k.c.fd < 0)
        fallback(k.path, strerror(err), o->cmd);

    int go[2];
    if (pipe_high(g_wake, O_CLOEXEC | O_NONBLOCK) < 0 || pipe_high(go, O_CLOEXEC) < 0) {
        conn_close(&k.c);
        fallback(k.path, strerror(errno), o->cmd);
    }
    signals_take(&k.ss);
    k.pid = fork();
    if (k.pid < 0) {
        int e = errno;
        signals_give_back(&k.ss);
        conn_close(&k.c);
        fallback(k.path, strerror(e), o->cmd);
    }
    if (k.pid == 0) {
        close(k.c.fd);
        close(g_wake[0]);
        close(g_wake[1]);
        close(go[1]);
        child_main(go[0], &k.ss, o->cmd);
    }
    close(go[0]);
    k.gofd = go[1];
    g_child = k.pid;
    sigprocmask(SIG_UNBLOCK, &k.ss.ours, NULL);

    struct buf req = {0};
    build_start(&req, k.pid, o);
    int sent = conn_send(&k.c, &req);
    buf_free(&req);
    if (sent < 0)
        abandon_and_fallback(&k, "connection closed");

    /* Notices (e.g. "queued" under admission control) may come before the answer. */
    struct reply r;
    int st;
    struct rusage ru;
    for (;;) {
        char *line;
        size_t len;
        enum ev e = next_event(&k.c, -1, &line, &len);
        if (e == EV_CHILD) {
            /* Killed while waiting (a forwarded SIGTERM, Ctrl-C): the call is over. */
            if (reap(k.pid, &st, &ru)) {
                conn_close(&k.c);
                buf_free(&k.c.in);
                return status_code(st);
            }
            continue;
        }
        if (e != EV_LINE)
            abandon_and_fallback(&k, "connection closed before the reply");
        if (reply_parse(line, len, &r) < 0) {
            reply_free(&r);
            abandon_and_fallback(&k, "malformed reply");
        }
        if (r.ok >= 0)
            break;
        print_notice(&r);
        reply_free(&r);
    }
    if (r.ok == 0) {
        const char *msg = r.err_message ? r.err_message : r.err_code ? r.err_code : "tool call refused";
        if (r.err_code && strcmp(r.err_code, "unavailable") == 0)
            abandon_and_fallback(&k, msg);
        fprintf(stderr, "agentd: %s\n", msg);
        abandon(&k);
        reply_free(&r);
        buf_free(&k.c.in);
        return EXIT_AGENTD;
    }
    print_lines(&r.messages);

    struct buf gobuf = {0};
    buf_addc(&gobuf, 'G');
    for (size_t i = 0; i < r.env.n; i++)
        buf_add(&gobuf, r.env.v[i], strlen(r.env.v[i]) + 1);
    double t0 = now_s();
    (void)write_all(k.gofd, gobuf.p, gobuf.len);  /* EPIPE: the child died; reaped below */
    close(k.gofd);
    buf_free(&gobuf);

    for (;;) {
        char *line;
        size_t len;
        enum ev e = next_event(&k.c, -1, &line, &len);
        if (e == EV_CHILD) {
            if (reap(k.pid, &st, &ru))
                break;
        } else if (e == EV_CLOSED) {
            conn_close(&k.c);  /* daemon restarting; CMD carries on, reported at the end */
        } else if (e == EV_LINE) {
            struct reply n;
            if (reply_parse(line, len, &n) == 0 && n.ok < 0)
                print_notice(&n);
            reply_free(&n);
        }
    }
    double wall = now_s() - t0;
    g_child = 0;
    if (r.agent && r.tool)
        report_done(&k.c, k.path, r.agent, r.tool, st, wall, &ru);
    reply_free(&r);
    conn_close(&k.c);
    buf_free(&k.c.in);
    return status_code(st);
}
