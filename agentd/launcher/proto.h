/* Requests and replies of `agentd tool` (proto.c). */
#ifndef AGENTD_LAUNCHER_PROTO_H
#define AGENTD_LAUNCHER_PROTO_H

#include <sys/resource.h>
#include <sys/types.h>

#include "conn.h"
#include "json.h"
#include "launcher.h"

/* The tool_start line for the waiting child pid. */
void build_start(struct buf *b, pid_t pid, const struct tool_opts *o);
void print_lines(const struct strlist *l);
void print_notice(const struct reply *r);
/* Send tool_done (reconnecting if the daemon restarted), print the reply's messages and
 * write its result to AGENTD_FEEDBACK_FILE / _FD. Failures are warnings: CMD has run. */
void report_done(struct conn *c, const char *path, const char *agent, const char *tool,
                 int st, double wall, const struct rusage *ru);

#endif
