/* The launcher's connection to the daemon: connect with retries, send, read lines. */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A reply longer than this is not the agentd protocol; stop reading rather than grow. */
#define REPLY_MAX_BYTES (1024 * 1024)

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * Keep our descriptors above stdio. If the agent started us with fd 0-2 closed, a
 * socket or pipe would land there, and CMD (or our own warnings) would read or write
 * the daemon connection. CMD must see its stdio exactly as inherited, closed or not.
 */
int high_fd(int fd)
{
    if (fd < 0 || fd > 2)
        return fd;
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return h;
}

int pipe_high(int p[2], int flags)
{
    if (pipe2(p, flags) < 0)
        return -1;
    p[0] = high_fd(p[0]);
    p[1] = high_fd(p[1]);
    return p[0] < 0 || p[1] < 0 ? -1 : 0;  /* a dup shares O_NONBLOCK with the original */
}

int write_all(int fd, const char *p, size_t n)
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

/* The socket is non-blocking: a daemon that stopped reading (hung, stopped) makes a
 * large request wait for room, and that wait is bounded like a reply's. */
int conn_send(struct conn *c, const struct buf *b, int timeout_ms)
{
    size_t off = 0;
    double deadline = now_s() + timeout_ms / 1000.0;
    while (off < b->len) {
        ssize_t n = send(c->fd, b->p + off, b->len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
            double left = deadline - now_s();
            if (timeout_ms >= 0 && left <= 0) {
                errno = ETIMEDOUT;
                return -1;
            }
            struct pollfd p = {c->fd, POLLOUT, 0};
            if (poll(&p, 1, timeout_ms < 0 ? -1 : (int)(left * 1000) + 1) < 0 && errno != EINTR)
                return -1;
            continue;
        }
        off += (size_t)n;
    }
    return 0;
}

/* AGENTD_REPLY_TIMEOUT (seconds) or the default: how long a request may go without any
 * line from the daemon. A working daemon sends a keepalive notice every second while a
 * request takes long (an admission wait); silence means it hangs. */
int reply_timeout_ms(void)
{
    const char *s = getenv("AGENTD_REPLY_TIMEOUT");
    if (s && *s) {
        char *end;
        double v = strtod(s, &end);
        if (*end == '\0' && v > 0 && v < 86400)
            return (int)(v * 1000);
    }
    return DEFAULT_REPLY_TIMEOUT_MS;
}

void conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->in.len = c->off = 0;
}

/* Retries only the errors a restarting daemon causes; anything else means no daemon. */
int connect_retry(const char *path, int budget_ms, int *err)
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
        /* Non-blocking: a full backlog (a hung or flooded daemon) is EAGAIN, retried
         * within the budget, instead of a connect() that blocks for good. */
        int fd = high_fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
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
enum ev next_event(struct conn *c, int timeout_ms, char **line, size_t *len)
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
        struct pollfd p[2] = {{c->wake, POLLIN, 0}, {c->fd, POLLIN, 0}};
        int n = poll(p, 2, wait_ms);
        if (n < 0 && errno != EINTR)
            return EV_CLOSED;
        if (n <= 0)
            continue;
        if (p[0].revents) {
            char drain[64];
            while (read(c->wake, drain, sizeof drain) > 0)
                ;
            return EV_CHILD;
        }
        if (p[1].revents) {
            char tmp[16384];
            ssize_t r = read(c->fd, tmp, sizeof tmp);
            if (r > 0)
                buf_add(&c->in, tmp, (size_t)r);
            else if (!(r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)))
                return EV_CLOSED;
        }
    }
}
