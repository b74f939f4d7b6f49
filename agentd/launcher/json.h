/*
 * Just enough JSON for the agentd API (agentd/api/protocol.py): a writer for the
 * requests the launcher sends and a reader for the flat replies the daemon sends.
 * A full JSON library would be the only dependency of the launcher beyond libc; the
 * replies are simple enough that a few hundred lines cover them exactly.
 */
#ifndef AGENTD_LAUNCHER_JSON_H
#define AGENTD_LAUNCHER_JSON_H

#include <stddef.h>

/* Growable byte buffer; always NUL-terminated once anything was added. */
struct buf {
    char *p;
    size_t len, cap;
};

void buf_add(struct buf *b, const void *s, size_t n);
void buf_adds(struct buf *b, const char *s);
void buf_addc(struct buf *b, char c);
void buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(struct buf *b);

/*
 * Append s as a quoted JSON string, reading at most max bytes of it (a character
 * cut there becomes U+FFFD). Control characters are escaped; bytes that are not valid
 * UTF-8 become U+FFFD, because argv and cwd are arbitrary bytes on Linux and the
 * daemon (Python json) refuses invalid UTF-8.
 */
void buf_json_str(struct buf *b, const char *s, size_t max);

struct strlist {
    char **v;
    size_t n, cap;
};

void strlist_push(struct strlist *l, char *s); /* takes ownership of s */
void strlist_free(struct strlist *l);

/* One reply line from the daemon: the union of the fields of every reply kind. */
struct reply {
    int ok;                 /* -1: no "ok" key (a notice), 0: false, 1: true */
    char *notice;           /* notice kind, e.g. "queued" */
    char *message;          /* notice text */
    char *agent, *tool;     /* tool_start reply: ids to quote in tool_attach/tool_done */
    char *path;             /* tool_start reply: the tool call's cgroup directory */
    char *err_code, *err_message;
    struct strlist env;     /* "KEY=VALUE" entries for the tool's environment */
    char *oom_score_adj;    /* tool_start reply: the child writes it to /proc/self before exec */
    struct strlist messages;
    char *result;           /* raw JSON text of "result", for the feedback file */
};

/* Parse one line; returns 0, or -1 if it is not a JSON object. Unknown keys are skipped. */
int reply_parse(const char *line, size_t len, struct reply *r);
void reply_free(struct reply *r);

/* Allocation failure leaves nothing sensible to do in a short-lived launcher. */
void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrndup(const char *s, size_t n);

#endif
