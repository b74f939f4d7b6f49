/*
 * `agentd tool`: run CMD as one tool call in a cgroup of its own.
 *
 * Race-free placement: CMD's process must be inside the tool-call cgroup before CMD
 * starts, so that everything it ever forks is born there. We ask the daemon for the
 * cgroup first, then either
 *  - clone3(CLONE_INTO_CGROUP) straight into it (Linux 5.7+, and we may write its
 *    cgroup.procs, e.g. as root): no migration at all; or
 *  - fork a child that waits on a pipe, have the daemon move it (tool_attach; the
 *    daemon checks with SO_PEERCRED and /proc that it is our child in our agent),
 *    and only then let it exec CMD.
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
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
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

/* The tool call's place in the kernel OOM killer's order (agentd/oom.py). It is above
 * the agent's, and raising needs no privilege. A failure leaves the agent's value:
 * the call then runs, just protected like the agent. Only a writer with
 * CAP_SYS_RESOURCE also pins the call's floor; where we lack it, the daemon gives us
 * no cgroup path to clone into, and writes the value itself when it attaches the child. */
static void set_oom_score_adj(const char *v)
{
    if (!v || !*v)
        return;
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)write_all(fd, v, strlen(v));
    close(fd);
}

/* In the child, before CMD: the inherited signal state back, the daemon's variables in. */
static void __attribute__((noreturn)) child_exec(const struct saved_signals *s, const struct reply *r, char **cmd)
{
    signals_give_back(s);
    set_oom_score_adj(r->oom_score_adj);
    const struct strlist *env = &r->env;
    for (size_t i = 0; i < env->n; i++) {
        char *kv = env->v[i];  /* our own copy since fork/clone */
        char *eq = strchr(kv, '=');
        if (eq) {
            *eq = '\0';
            setenv(kv, eq + 1, 1);
        }
    }
    exec_cmd(cmd);
}

/* The held child: waits for the go-ahead byte. EOF without it means the parent gave
 * up or died: CMD must not run outside its cgroup. */
static void __attribute__((noreturn)) child_held(int gofd, const struct saved_signals *s,
                                                 const struct reply *r, char **cmd)
{
    signals_give_back(s);  /* a forwarded SIGTERM ends the wait */
    char c = 0;
    ssize_t n;
    do
        n = read(gofd, &c, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1 || c != 'G')
        _exit(EXIT_AGENTD);
    close(gofd);
    child_exec(s, r, cmd);
}

/*
 * Born in the cgroup: a later move (a write to cgroup.procs) waits for an RCU grace
 * period, milliseconds on a busy host, on every tool call; CLONE_INTO_CGROUP costs
 * nothing extra. Raw syscall (glibc has no wrapper); like fork, without CLONE_VM the
 * child runs on a copy of our memory. Returns -1 when the kernel or permissions say
 * no, and the caller uses the held child instead.
 */
struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size,
        cgroup;
};
#define AGENTD_CLONE_INTO_CGROUP 0x200000000ULL
#ifndef SYS_clone3
#define SYS_clone3 435  /* the same number on every architecture */
#endif

static pid_t clone_into(const char *cgroup_dir)
{
    int fd = open(cgroup_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct clone_args_v2 a;
    memset(&a, 0, sizeof a);
    a.flags = AGENTD_CLONE_INTO_CGROUP;
    a.exit_signal = SIGCHLD;
    a.cgroup = (uint64_t)fd;
    pid_t pid = (pid_t)syscall(SYS_clone3, &a, sizeof a);
    close(fd);
    return pid;
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

/* A hung daemon must never hang the agent: it gets one line, and CMD runs unplaced. */
static void __attribute__((noreturn)) fallback_hung(const char *path, char **cmd)
{
    fprintf(stderr, "agentd: the daemon at %s did not answer within %.3g s: running %s without a tool-call cgroup\n",
            path, reply_timeout_ms() / 1000.0, cmd[0]);
    exec_cmd(cmd);
}

struct call {
    const char *path;
    char **cmd;
    struct conn c;
    struct saved_signals ss;
    pid_t pid;   /* the child, -1 before there is one */
    int gofd;    /* write end of the held child's pipe, -1 if none */
    int timeout_ms;  /* for each line of a reply (reply_timeout_ms()) */
};

/* Undo everything (the waiting child dies unplaced) so CMD can run as if we were not here. */
static void abandon(struct call *k)
{
    g_child = 0;
    kill(k->pid, SIGKILL);
    while (waitpid(k->pid, NULL, 0) < 0 && errno == EINTR)
        ;
    conn_close(&k->c);
    if (k->gofd >= 0)
        close(k->gofd);
    signals_give_back(&k->ss);
    close(g_wake[0]);
    close(g_wake[1]);
}

static void __attribute__((noreturn)) abandon_and_fallback(struct call *k, const char *why)
{
    if (k->pid > 0)
        abandon(k);
    conn_close(&k->c);
    if (why == NULL)
        fallback_hung(k->path, k->cmd);
    fallback(k->path, why, k->cmd);
}

/* Why a send or a reply failed, for abandon_and_fallback (NULL: the daemon hangs). */
static const char *lost(int rc_or_errno, const char *closed)
{
    return rc_or_errno == ETIMEDOUT ? NULL : closed;
}

/* Notices (e.g. "queued" under admission control) may come before the answer.
 * 1: the answer is in *r; 0: the held child died first (status in *st); -1: the
 * connection broke or does not speak our protocol; ETIMEDOUT: no line came within
 * k->timeout_ms (each line, keepalives included, starts the wait again). */
static int await_reply(struct call *k, struct reply *r, int *st, struct rusage *ru)
{
    double deadline = now_s() + k->timeout_ms / 1000.0;
    for (;;) {
        char *line;
        size_t len;
        int left_ms = (int)((deadline - now_s()) * 1000);
        enum ev e = next_event(&k->c, left_ms > 0 ? left_ms : 0, &line, &len);
        if (e == EV_TIMEOUT)
            return ETIMEDOUT;
        if (e == EV_CHILD) {
            if (k->pid > 0 && reap(k->pid, st, ru))
                return 0;
            continue;
        }
        if (e != EV_LINE)
            return -1;
        if (reply_parse(line, len, r) < 0) {
            reply_free(r);
            return -1;
        }
        if (r->ok >= 0)
            return 1;
        print_notice(r);
        reply_free(r);
        deadline = now_s() + k->timeout_ms / 1000.0;
    }
}

/* An error answer: "unavailable" means run without agentd, anything else is final. */
static int refused(struct call *k, struct reply *r)
{
    const char *msg = r->err_message ? r->err_message : r->err_code ? r->err_code : "tool call refused";
    if (r->err_code && strcmp(r->err_code, "unavailable") == 0)
        abandon_and_fallback(k, msg);
    fprintf(stderr, "agentd: %s\n", msg);
    if (k->pid > 0)
        abandon(k);
    conn_close(&k->c);
    return EXIT_AGENTD;
}

/* Fork a child that waits, have the daemon move it, then let it go. Returns -1 once
 * CMD is on its way, else the exit status for the launcher. */
static int start_held(struct call *k, const struct reply *start, int *st, struct rusage *ru)
{
    int go[2];
    if (pipe_high(go, O_CLOEXEC) < 0) {
        int e = errno;
        signals_give_back(&k->ss);
        abandon_and_fallback(k, strerror(e));
    }
    k->pid = fork();
    if (k->pid < 0) {
        int e = errno;
        signals_give_back(&k->ss);
        abandon_and_fallback(k, strerror(e));
    }
    if (k->pid == 0) {
        close(k->c.fd);
        close(g_wake[0]);
        close(g_wake[1]);
        close(go[1]);
        child_held(go[0], &k->ss, start, k->cmd);
    }
    close(go[0]);
    k->gofd = go[1];
    g_child = k->pid;
    sigprocmask(SIG_UNBLOCK, &k->ss.ours, NULL);

    struct buf req = {0};
    build_attach(&req, start->agent, start->tool, k->pid);
    int sent = conn_send(&k->c, &req, k->timeout_ms);
    buf_free(&req);
    if (sent < 0)
        abandon_and_fallback(k, lost(errno, "connection closed"));
    struct reply r;
    int rc = await_reply(k, &r, st, ru);
    if (rc == 0) {  /* killed while waiting (a forwarded SIGTERM, Ctrl-C): the call is over */
        conn_close(&k->c);
        return status_code(*st);
    }
    if (rc != 1)
        abandon_and_fallback(k, lost(rc, "connection closed before the reply"));
    if (r.ok == 0) {
        int code = refused(k, &r);
        reply_free(&r);
        return code;
    }
    reply_free(&r);
    (void)write_all(k->gofd, "G", 1);  /* EPIPE: the child died; reaped below */
    close(k->gofd);
    k->gofd = -1;
    return -1;
}

int tool_run(const struct tool_opts *o)
{
    const char *env = getenv("AGENTD_SOCKET");
    struct call k = {.path = env && *env ? env : DEFAULT_SOCKET, .cmd = o->cmd, .c = {.fd = -1, .wake = -1},
                     .pid = -1, .gofd = -1, .timeout_ms = reply_timeout_ms()};
    int err = 0;
    k.c.fd = connect_retry(k.path, CONNECT_BUDGET_MS, &err);
    if (k.c.fd < 0)
        fallback(k.path, strerror(err), o->cmd);

    /* No child yet, and our signals keep their inherited meaning: a call cancelled
     * while queued (SIGTERM, Ctrl-C) just ends here; the daemon sees the connection go. */
    struct buf req = {0};
    build_start(&req, o);
    int sent = conn_send(&k.c, &req, k.timeout_ms);
    buf_free(&req);
    if (sent < 0)
        abandon_and_fallback(&k, lost(errno, "connection closed"));
    struct reply r;
    int st = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    int rc = await_reply(&k, &r, &st, &ru);
    if (rc != 1)  /* no child yet, so never 0 */
        abandon_and_fallback(&k, lost(rc, "connection closed before the reply"));
    if (r.ok == 0) {
        int code = refused(&k, &r);
        reply_free(&r);
        buf_free(&k.c.in);
        return code;
    }
    print_lines(&r.messages);

    if (pipe_high(g_wake, O_CLOEXEC | O_NONBLOCK) < 0)
        abandon_and_fallback(&k, strerror(errno));
    k.c.wake = g_wake[0];
    signals_take(&k.ss);
    double t0 = now_s();
    k.pid = r.path ? clone_into(r.path) : -1;
    if (k.pid == 0)
        child_exec(&k.ss, &r, o->cmd);
    if (k.pid > 0) {
        g_child = k.pid;
        sigprocmask(SIG_UNBLOCK, &k.ss.ours, NULL);
    } else {
        int code = start_held(&k, &r, &st, &ru);
        if (code >= 0) {
            reply_free(&r);
            buf_free(&k.c.in);
            return code;
        }
    }

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
    if (r.agent && r.tool)
        report_done(&k.c, k.path, r.agent, r.tool, st, wall, &ru);
    reply_free(&r);
    conn_close(&k.c);
    buf_free(&k.c.in);
    return status_code(st);
}
