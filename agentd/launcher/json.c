/* The JSON reader of the agentd launcher: the flat replies of the daemon; see json.h. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* ---- reader ---- */

struct jp {
    const char *p, *end;
    int depth;
};

/* Replies are flat; the bound only protects the recursive skipper from hostile input. */
#define MAX_DEPTH 32

static void ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int eat(struct jp *j, char c)
{
    ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 1;
    }
    return 0;
}

static int word(struct jp *j, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(j->end - j->p) >= n && memcmp(j->p, w, n) == 0) {
        j->p += n;
        return 1;
    }
    return 0;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

static void put_utf8(struct buf *b, unsigned cp)
{
    char u[4];
    if (cp < 0x80) {
        buf_addc(b, (char)cp);
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        buf_add(b, u, 2);
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        buf_add(b, u, 3);
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        buf_add(b, u, 4);
    }
}

/* Decode a string at j->p (which must be '"') into out, or just skip it if out is NULL.
 * U+0000 and unpaired surrogates become U+FFFD so the result is a valid C string. */
static int jstr(struct jp *j, struct buf *out)
{
    ws(j);
    if (j->p >= j->end || *j->p != '"')
        return -1;
    j->p++;
    while (j->p < j->end) {
        char c = *j->p++;
        if (c == '"')
            return 0;
        if (c != '\\') {
            if (out)
                buf_addc(out, c);
            continue;
        }
        if (j->p >= j->end)
            return -1;
        c = *j->p++;
        unsigned cp;
        switch (c) {
        case '"': case '\\': case '/': cp = (unsigned char)c; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (j->end - j->p < 4 || hex4(j->p, &cp) < 0)
                return -1;
            j->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u' &&
                    hex4(j->p + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                    j->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else {
                    cp = 0xFFFD;
                }
            } else if ((cp >= 0xDC00 && cp <= 0xDFFF) || cp == 0) {
                cp = 0xFFFD;
            }
            break;
        default:
            return -1;
        }
        if (out)
            put_utf8(out, cp);
    }
    return -1;
}

static int skip(struct jp *j);

static int skip_container(struct jp *j, char close, int is_object)
{
    if (++j->depth > MAX_DEPTH)
        return -1;
    if (eat(j, close)) {
        j->depth--;
        return 0;
    }
    do {
        if (is_object && (jstr(j, NULL) < 0 || !eat(j, ':')))
            return -1;
        if (skip(j) < 0)
            return -1;
    } while (eat(j, ','));
    if (!eat(j, close))
        return -1;
    j->depth--;
    return 0;
}

/* Skip any value. Numbers are accepted loosely: the launcher never needs their value. */
static int skip(struct jp *j)
{
    ws(j);
    if (j->p >= j->end)
        return -1;
    char c = *j->p;
    if (c == '"')
        return jstr(j, NULL);
    if (c == '{') {
        j->p++;
        return skip_container(j, '}', 1);
    }
    if (c == '[') {
        j->p++;
        return skip_container(j, ']', 0);
    }
    if (word(j, "true") || word(j, "false") || word(j, "null"))
        return 0;
    const char *start = j->p;
    while (j->p < j->end && strchr("+-0123456789.eE", *j->p))
        j->p++;
    return j->p > start ? 0 : -1;
}

/* A string value into *dst (replacing an earlier one); any other value is skipped. */
static int field_str(struct jp *j, char **dst)
{
    ws(j);
    if (j->p >= j->end || *j->p != '"')
        return skip(j);
    struct buf b = {0};
    if (jstr(j, &b) < 0) {
        buf_free(&b);
        return -1;
    }
    free(*dst);
    *dst = b.p ? b.p : xstrndup("", 0);
    return 0;
}

static int field_str_array(struct jp *j, struct strlist *l)
{
    if (!eat(j, '['))
        return skip(j);
    if (eat(j, ']'))
        return 0;
    do {
        char *s = NULL;
        if (field_str(j, &s) < 0)
            return -1;
        if (s)
            strlist_push(l, s);
    } while (eat(j, ','));
    return eat(j, ']') ? 0 : -1;
}

/* {"K": "V", ...} -> "K=V" entries. A name setenv() would refuse is dropped here. */
static int field_env(struct jp *j, struct strlist *l)
{
    if (!eat(j, '{'))
        return skip(j);
    if (eat(j, '}'))
        return 0;
    do {
        struct buf k = {0};
        char *v = NULL;
        if (jstr(j, &k) < 0 || !eat(j, ':') || field_str(j, &v) < 0) {
            buf_free(&k);
            free(v);
            return -1;
        }
        if (k.len > 0 && !memchr(k.p, '=', k.len) && v) {
            buf_addc(&k, '=');
            buf_adds(&k, v);
            strlist_push(l, k.p);
        } else {
            buf_free(&k);
        }
        free(v);
    } while (eat(j, ','));
    return eat(j, '}') ? 0 : -1;
}

static int field_error(struct jp *j, struct reply *r)
{
    if (!eat(j, '{'))
        return skip(j);
    if (eat(j, '}'))
        return 0;
    do {
        struct buf k = {0};
        int rc = jstr(j, &k) < 0 || !eat(j, ':') ? -1 : 0;
        if (rc == 0) {
            if (k.p && strcmp(k.p, "code") == 0)
                rc = field_str(j, &r->err_code);
            else if (k.p && strcmp(k.p, "message") == 0)
                rc = field_str(j, &r->err_message);
            else
                rc = skip(j);
        }
        buf_free(&k);
        if (rc < 0)
            return -1;
    } while (eat(j, ','));
    return eat(j, '}') ? 0 : -1;
}

static int field(struct jp *j, const char *key, struct reply *r)
{
    if (strcmp(key, "ok") == 0) {
        ws(j);
        if (word(j, "true"))
            r->ok = 1;
        else if (word(j, "false"))
            r->ok = 0;
        else
            return skip(j);
        return 0;
    }
    if (strcmp(key, "notice") == 0)
        return field_str(j, &r->notice);
    if (strcmp(key, "message") == 0)
        return field_str(j, &r->message);
    if (strcmp(key, "agent") == 0)
        return field_str(j, &r->agent);
    if (strcmp(key, "tool") == 0)
        return field_str(j, &r->tool);
    if (strcmp(key, "path") == 0)
        return field_str(j, &r->path);
    if (strcmp(key, "env") == 0)
        return field_env(j, &r->env);
    if (strcmp(key, "oom_score_adj") == 0)
        return field_str(j, &r->oom_score_adj);
    if (strcmp(key, "messages") == 0)
        return field_str_array(j, &r->messages);
    if (strcmp(key, "error") == 0)
        return field_error(j, r);
    if (strcmp(key, "result") == 0) {
        ws(j);
        const char *start = j->p;
        if (skip(j) < 0)
            return -1;
        free(r->result);
        r->result = xstrndup(start, (size_t)(j->p - start));
        return 0;
    }
    return skip(j);
}

int reply_parse(const char *line, size_t len, struct reply *r)
{
    memset(r, 0, sizeof *r);
    r->ok = -1;
    struct jp j = {line, line + len, 0};
    if (!eat(&j, '{'))
        return -1;
    if (!eat(&j, '}')) {
        do {
            struct buf k = {0};
            int rc = jstr(&j, &k) < 0 || !eat(&j, ':') ? -1 : field(&j, k.p ? k.p : "", r);
            buf_free(&k);
            if (rc < 0)
                return -1;
        } while (eat(&j, ','));
        if (!eat(&j, '}'))
            return -1;
    }
    ws(&j);
    return j.p == j.end ? 0 : -1;
}

void reply_free(struct reply *r)
{
    free(r->notice);
    free(r->message);
    free(r->agent);
    free(r->tool);
    free(r->path);
    free(r->oom_score_adj);
    free(r->err_code);
    free(r->err_message);
    free(r->result);
    strlist_free(&r->env);
    strlist_free(&r->messages);
    memset(r, 0, sizeof *r);
}
