/* Shared between the front (agentd.c) and the tool-call client (tool.c). */
#ifndef AGENTD_LAUNCHER_H
#define AGENTD_LAUNCHER_H

/* Exit codes, as env(1), nohup(1) and shells use them. */
#define EXIT_AGENTD 125    /* agentd refused or failed; CMD did not run */
#define EXIT_NOEXEC 126    /* CMD found but could not be executed */
#define EXIT_NOTFOUND 127  /* CMD not found */
#define EXIT_USAGE 2

#define DEFAULT_SOCKET "/run/agentd/agentd.sock"

struct tool_opts {
    const char *cls, *mem, *intent;
    char **cmd;            /* NULL-terminated, at least one element */
};

/* Runs the tool call; returns the exit status for the launcher. */
int tool_run(const struct tool_opts *o);

/* execvp(cmd) in this process; on failure prints why and _exit()s with 126/127. */
void exec_cmd(char **cmd) __attribute__((noreturn));

#endif
