/*
 * agentd: the command users and agents run.
 *
 * `agentd tool ... -- CMD` sits on the path of every tool call an agent makes, and tool
 * calls are many and often tiny (`git status`, `ls`). Starting a Python interpreter
 * costs 10-65 ms per call on a typical host, so that path is this small C program:
 * a fork and one round trip to the daemon (tool.c). Every other subcommand is rare
 * and rich, so it is handed to the Python CLI by exec, keeping one implementation of
 * each command.
 */
#include "launcher.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The interpreter the package was built for (set by agentd/_build.py). */
#ifndef AGENTD_PYTHON
#define AGENTD_PYTHON "python3"
#endif

static const char usage_text[] =
    "usage: agentd tool [--class C] [--mem SIZE] [--intent TEXT] -- CMD [ARGS...]\n"
    "\n"
    "Run CMD as one tool call of the agent this process belongs to: agentd puts it in\n"
    "a cgroup of its own (limits, accounting, freeze/kill per call) and exits with\n"
    "CMD's status. Without a reachable daemon CMD runs as is, after one warning.\n"
    "\n"
    "  --class C       tool-call class for the policy (e.g. build, test, install)\n"
    "  --mem SIZE      expected memory use, e.g. 2Gi or 512M (a hint for the policy)\n"
    "  --intent TEXT   free text recorded with the call (why the agent runs it)\n"
    "\n"
    "environment: AGENTD_SOCKET (default " DEFAULT_SOCKET "),\n"
    "  AGENTD_FEEDBACK_FILE / AGENTD_FEEDBACK_FD (where to append the call's result as JSON)\n";

static int usage_error(const char *fmt, const char *arg)
{
    fputs("agentd tool: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\nusage: agentd tool [--class C] [--mem SIZE] [--intent TEXT] -- CMD [ARGS...]\n", stderr);
    return EXIT_USAGE;
}

/* Matches "--name VALUE" and "--name=VALUE"; advances *i past a separate value. */
static int take_opt(const char *name, int argc, char **argv, int *i, const char **val, int *err)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
    } else if (a[n] == '\0') {
        if (*i + 1 >= argc) {
            *err = usage_error("option %s needs a value", name);
            return 1;
        }
        *val = argv[++*i];
    } else {
        return 0;
    }
    if (**val == '\0')
        *err = usage_error("option %s needs a non-empty value", name);
    return 1;
}

static int tool_main(int argc, char **argv)
{
    struct tool_opts o = {0};
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        int err = 0;
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        /* Like getopt's "+": the first non-option starts CMD, so CMD's own options
         * are never taken for ours even without "--". */
        if (a[0] != '-' || a[1] == '\0')
            break;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (take_opt("--class", argc, argv, &i, &o.cls, &err) ||
            take_opt("--mem", argc, argv, &i, &o.mem, &err) ||
            take_opt("--intent", argc, argv, &i, &o.intent, &err)) {
            if (err)
                return err;
            continue;
        }
        return usage_error("unknown option '%s'", a);
    }
    if (i >= argc)
        return usage_error("%s", "missing command to run");
    o.cmd = argv + i;
    return tool_run(&o);
}

/* Every subcommand but `tool` is served by `python -m agentd` with the same arguments. */
static int front(int argc, char **argv)
{
    const char *env = getenv("AGENTD_PYTHON");
    const char *py = env && *env ? env : AGENTD_PYTHON;
    char **nargv = calloc((size_t)argc + 3, sizeof *nargv);
    if (!nargv) {
        fputs("agentd: out of memory\n", stderr);
        return EXIT_AGENTD;
    }
    nargv[0] = (char *)py;
    nargv[1] = "-m";
    nargv[2] = "agentd";
    for (int k = 1; k < argc; k++)
        nargv[k + 2] = argv[k];
    execvp(py, nargv);
    int e = errno;
    /* A package built elsewhere may name an interpreter this host lacks; the python3
     * on PATH is the best remaining guess unless the user chose one explicitly. */
    if (e == ENOENT && !(env && *env)) {
        nargv[0] = "python3";
        execvp("python3", nargv);
    }
    fprintf(stderr, "agentd: cannot start the Python CLI with %s: %s\n"
                    "agentd: set AGENTD_PYTHON to a python3 that has the agentd package installed\n",
            py, strerror(e));
    return e == ENOENT ? EXIT_NOTFOUND : EXIT_NOEXEC;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "tool") == 0)
        return tool_main(argc - 1, argv + 1);
    return front(argc, argv);
}
