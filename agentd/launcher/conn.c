/* The launcher's connection to the daemon: connect with retries, send, read lines. */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

int conn_send(struct conn *c, const struct buf *b)
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
            else if (!(r < 0 && errno == EINTR))
                return EV_CLOSED;
        }
    }
}
