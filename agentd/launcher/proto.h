/* Requests and replies of `agentd tool` (proto.c). */
#ifndef AGENTD_LAUNCHER_PROTO_H
#define AGENTD_LAUNCHER_PROTO_H

#include <sys/resource.h>
#include <sys/types.h>

#include "conn.h"
#include "json.h"
#include "launcher.h"

/* tool_start: the daemon makes the cgroup and answers with its directory ("path"). */
void build_start(struct buf *b, const struct tool_opts *o);
/* tool_attach: move our waiting child pid into the tool call's cgroup. */
void build_attach(struct buf *b, const char *agent, const char *tool, pid_t pid);
void print_lines(const struct strlist *l);
void print_notice(const struct reply *r);
/* Send tool_done (reconnecting if the daemon restarted), print the reply's messages and
 * write its result to AGENTD_FEEDBACK_FILE / _FD. Failures are warnings: CMD has run. */
void report_done(struct conn *c, const char *path, const char *agent, const char *tool,
                 int st, double wall, const struct rusage *ru);

#endif
