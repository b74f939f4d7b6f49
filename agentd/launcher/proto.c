/* The launcher's two requests, tool_start and tool_done, and what it does with replies. */
#include "proto.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The daemon refuses request lines over 256 KiB (agentd/api/protocol.py). A huge
 * `bash -c SCRIPT` is shortened here so the call is still placed and logged. The fuzz
 * harness (fuzz/) builds with small values so that short inputs reach the cuts. */
#ifndef ARGV_BUDGET
#define ARGV_MAX_ITEMS 1024
#define ARG_MAX_BYTES (32 * 1024)
#define ARGV_BUDGET (192 * 1024)
#endif

/* A restarted daemon needs a moment to re-adopt the call before it can take its end. */
#define RECONNECT_BUDGET_MS 3000
/* The end of a call is bookkeeping; an unresponsive daemon must not hold the agent. */
#define DONE_REPLY_TIMEOUT_MS 10000

static void add_opt_str(struct buf *b, const char *key, const char *val, size_t max)
{
    buf_addf(b, ",\"%s\":", key);
    if (val)
        buf_json_str(b, val, max);
    else
        buf_adds(b, "null");
}

void build_start(struct buf *b, const struct tool_opts *o)
{
    buf_adds(b, "{\"v\":1,\"op\":\"tool_start\",\"argv\":[");
    /* Whole arguments while they fit; the first that does not is cut, and the rest
     * dropped: the daemon matches and logs the start of a command line. */
    size_t start = b->len;
    for (size_t i = 0; o->cmd[i] && i < ARGV_MAX_ITEMS; i++) {
        size_t mark = b->len;
        if (i)
            buf_addc(b, ',');
        buf_json_str(b, o->cmd[i], ARG_MAX_BYTES);
        if (b->len - start <= ARGV_BUDGET)
            continue;
        b->len = mark;
        b->p[mark] = '\0';
        /* What is left after the comma and the two quotes of the cut argument. */
        size_t used = mark - start + (i ? 1 : 0) + 2;
        size_t left = used < ARGV_BUDGET ? ARGV_BUDGET - used : 0;
        if (left / 6 > 0) {  /* an escaped byte takes at most 6 ("\u001f") */
            if (i)
                buf_addc(b, ',');
            buf_json_str(b, o->cmd[i], left / 6);
        }
        break;
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

void build_attach(struct buf *b, const char *agent, const char *tool, pid_t pid)
{
    buf_adds(b, "{\"v\":1,\"op\":\"tool_attach\",\"agent\":");
    buf_json_str(b, agent ? agent : "", SIZE_MAX);
    buf_adds(b, ",\"tool\":");
    buf_json_str(b, tool ? tool : "", SIZE_MAX);
    buf_addf(b, ",\"pid\":%d}\n", (int)pid);
}

void print_lines(const struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        fprintf(stderr, "%s\n", l->v[i]);
}

void print_notice(const struct reply *r)
{
    if (r->notice && strcmp(r->notice, "keepalive") == 0)
        return;  /* the daemon is still at it: nothing to tell the agent */
    const char *m = r->message ? r->message : r->notice;
    if (m)
        fprintf(stderr, "%s\n", m);
}

/*
 * The feedback file is named by the environment, which the agent (or whatever steered
 * it) controls, and the launcher may run as root. Appending must not become a way to
 * write to a file the agent's user could not write itself: a symbolic link (in /tmp,
 * say, planted by another user) is not followed, and only a regular file this user
 * owns, with no other name, is written. A FIFO cannot hold the call up (O_NONBLOCK).
 * Returns the fd, or -1 after one line on stderr saying why not.
 */
static int open_feedback_file(const char *file)
{
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "agentd: not writing the tool-call result to %s: %s\n", file,
                errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return -1;
    }
    struct stat st;
    const char *why = NULL;
    char uidmsg[96];
    if (fstat(fd, &st) < 0) {
        why = strerror(errno);
    } else if (!S_ISREG(st.st_mode)) {
        why = "it is not a regular file";
    } else if (st.st_uid != geteuid()) {
        snprintf(uidmsg, sizeof uidmsg, "it belongs to uid %u, not to this user (uid %u)", (unsigned)st.st_uid,
                 (unsigned)geteuid());
        why = uidmsg;
    } else if (st.st_nlink > 1) {
        why = "it has more than one name (hard links)";
    }
    if (why) {
        fprintf(stderr, "agentd: not writing the tool-call result to %s: %s\n", file, why);
        close(fd);
        return -1;
    }
    return fd;
}

static void feedback(const char *result)
{
    if (!result || strcmp(result, "null") == 0)
        return;
    struct buf line = {0};
    buf_adds(&line, result);
    buf_addc(&line, '\n');
    const char *file = getenv("AGENTD_FEEDBACK_FILE");
    if (file && *file) {
        int fd = open_feedback_file(file);
        /* One write with O_APPEND: parallel tool calls never interleave lines. */
        if (fd >= 0 && write_all(fd, line.p, line.len) < 0)
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

void report_done(struct conn *c, const char *path, const char *agent, const char *tool,
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
        if (conn_send(c, &b, DONE_REPLY_TIMEOUT_MS) == 0)
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
