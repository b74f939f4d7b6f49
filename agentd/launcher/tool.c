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
#include "conn.h"
#include "json.h"
#include "launcher.h"
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* The daemon may be restarting: a short wait covers a socket being re-created. */
#define CONNECT_BUDGET_MS 1000

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
    k.c.wake = g_wake[0];
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
