/* The launcher's connection to the daemon (conn.c). */
#ifndef AGENTD_LAUNCHER_CONN_H
#define AGENTD_LAUNCHER_CONN_H

#include <stddef.h>

#include "json.h"

struct conn {
    int fd;        /* -1 while disconnected */
    int wake;      /* read end of the SIGCHLD self-pipe, polled alongside fd */
    struct buf in; /* bytes read and not yet returned as lines, from off */
    size_t off;
};

enum ev { EV_LINE, EV_CHILD, EV_CLOSED, EV_TIMEOUT };

double now_s(void);                        /* CLOCK_MONOTONIC seconds */
int high_fd(int fd);                       /* move fd above stdio (0-2) */
int pipe_high(int p[2], int flags);
int write_all(int fd, const char *p, size_t n);
/* Send all of b; -1 on error, or with errno ETIMEDOUT after timeout_ms (< 0: none). */
int conn_send(struct conn *c, const struct buf *b, int timeout_ms);
/* How long to wait for the daemon's next line (AGENTD_REPLY_TIMEOUT, seconds). */
#define DEFAULT_REPLY_TIMEOUT_MS 5000
int reply_timeout_ms(void);
void conn_close(struct conn *c);
/* Connect to path, retrying for budget_ms; the fd, or -1 with *err set. */
int connect_retry(const char *path, int budget_ms, int *err);
/* The next reply line (valid until the next call), a SIGCHLD wake-up, EOF, or timeout
 * (timeout_ms < 0: wait forever). With c->fd < 0 only the wake-up is waited for. */
enum ev next_event(struct conn *c, int timeout_ms, char **line, size_t *len);

#endif
