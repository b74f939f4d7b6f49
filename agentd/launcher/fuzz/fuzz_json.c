/*
 * libFuzzer harness for the launcher's JSON reader and writer (json.c, buf.c), the
 * request builder (proto.c) and the reply line splitter (conn.c). The launcher parses
 * whatever arrives on the daemon's socket and serialises arbitrary argv bytes, so both
 * directions must hold for any input, under ASan and UBSan.
 *
 *   clang-19 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -D_GNU_SOURCE -DARGV_MAX_ITEMS=16 -DARG_MAX_BYTES=256 -DARGV_BUDGET=1024 \
 *       -I agentd/launcher agentd/launcher/fuzz/fuzz_json.c \
 *       agentd/launcher/{buf,json,proto,conn}.c -o fuzz_json
 *   ./fuzz_json -runs=1000000 corpus/
 *
 * tests/unit/test_launcher_fuzz.py builds it and runs a short session in the test suite.
 * The first input byte picks what is exercised:
 *   0 reply_parse of the rest, freed as the launcher frees it;
 *   1 the writer: the rest as a C string through buf_json_str, which must be a strict
 *     JSON string (what Python's json accepts) that the reader decodes back to the input;
 *   2 build_start with an argv made from the rest (cut at NUL bytes, each piece repeated
 *     up to 8 times), which must be one line of strict JSON with its argv in budget;
 *   3 the rest written to a pipe and read back as reply lines by next_event.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "json.h"
#include "proto.h"

/* proto.c is built with these small limits (see the build line above), so that inputs
 * of a few hundred bytes take the paths that cut a long argv. */
#ifndef ARGV_BUDGET
#error "build proto.c and this harness with -DARGV_BUDGET=... (see the top of this file)"
#endif
#define FUZZ_MAX_ARGS (ARGV_MAX_ITEMS + 8)

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_json: check failed at line %d: %s\n", __LINE__, #cond); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* The checkers are not what is fuzzed: no coverage tracing in their byte loops. */
#define CHECKER __attribute__((no_sanitize("coverage")))

/* Strict UTF-8 as Python decodes it: length of the sequence at s, 0 if invalid. */
CHECKER static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0], cp, min;
    size_t k;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        k = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        k = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        k = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (k > n)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    return (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) ? 0 : k;
}

CHECKER static int valid_utf8(const unsigned char *s, size_t n)
{
    while (n) {
        size_t k = utf8_seq(s, n);
        if (!k)
            return 0;
        s += k;
        n -= k;
    }
    return 1;
}

/* A JSON string token exactly as RFC 8259 has it, starting at s[*i]; advances *i. */
CHECKER static int strict_string(const unsigned char *s, size_t n, size_t *i)
{
    if (*i >= n || s[*i] != '"')
        return 0;
    size_t j = *i + 1;
    while (j < n && s[j] != '"') {
        if (s[j] < 0x20)
            return 0;
        if (s[j] == '\\') {
            if (j + 1 >= n)
                return 0;
            unsigned char e = s[j + 1];
            if (e == 'u') {
                if (j + 6 > n)
                    return 0;
                for (int h = 2; h < 6; h++)
                    if (!strchr("0123456789abcdefABCDEF", s[j + h]) || !s[j + h])
                        return 0;
                j += 6;
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || !e)
                return 0;
            j += 2;
            continue;
        }
        size_t k = utf8_seq(s + j, n - j);
        if (!k)
            return 0;
        j += k;
    }
    if (j >= n)
        return 0;
    *i = j + 1;
    return 1;
}

static void check_reply(const uint8_t *d, size_t n)
{
    struct reply r;
    if (reply_parse((const char *)d, n, &r) == 0) {
        CHECK(r.ok >= -1 && r.ok <= 1);
        for (size_t i = 0; i < r.env.n; i++)
            CHECK(strchr(r.env.v[i], '=') != NULL && r.env.v[i][0] != '=');
        if (r.result) {  /* a value the reader skipped must itself parse as one */
            struct buf w = {0};
            buf_adds(&w, "{\"result\":");
            buf_adds(&w, r.result);
            buf_addc(&w, '}');
            struct reply r2;
            CHECK(reply_parse(w.p, w.len, &r2) == 0);
            CHECK(r2.result && strcmp(r2.result, r.result) == 0);
            reply_free(&r2);
            buf_free(&w);
        }
    }
    reply_free(&r);  /* callers free after a failed parse too */
}

static void check_writer(const uint8_t *d, size_t n)
{
    if (n < 1)
        return;
    size_t max = d[0] == 255 ? SIZE_MAX : d[0];
    char *s = xstrndup((const char *)d + 1, n - 1);  /* stops at the first NUL, as argv does */
    size_t len = strlen(s);
    struct buf b = {0};
    buf_json_str(&b, s, max);
    size_t i = 0;
    CHECK(strict_string((const unsigned char *)b.p, b.len, &i) && i == b.len);

    struct buf w = {0};
    buf_adds(&w, "{\"message\":");
    buf_add(&w, b.p, b.len);
    buf_addc(&w, '}');
    struct reply r;
    CHECK(reply_parse(w.p, w.len, &r) == 0 && r.message);
    size_t cut = len < max ? len : max;
    if (valid_utf8((const unsigned char *)s, cut))
        CHECK(strlen(r.message) == cut && memcmp(r.message, s, cut) == 0);
    else  /* each invalid byte became U+FFFD (3 bytes) */
        CHECK(strlen(r.message) <= 3 * cut && valid_utf8((unsigned char *)r.message, strlen(r.message)));
    reply_free(&r);
    buf_free(&w);
    buf_free(&b);
    free(s);
}

static void check_start(const uint8_t *d, size_t n)
{
    if (n < 1)
        return;
    size_t rep = 1 + d[0] % 8;
    d++, n--;
    /* argv: the input cut at NUL bytes, each piece repeated rep times. */
    char *argvbuf[FUZZ_MAX_ARGS + 1];
    size_t argc = 0;
    size_t start = 0;
    for (size_t i = 0; i <= n && argc < FUZZ_MAX_ARGS; i++) {
        if (i < n && d[i] != 0)
            continue;
        size_t plen = i - start;
        char *a = xmalloc(plen * rep + 1);
        for (size_t k = 0; k < rep; k++)
            memcpy(a + k * plen, d + start, plen);
        a[plen * rep] = '\0';
        argvbuf[argc++] = a;
        start = i + 1;
    }
    argvbuf[argc] = NULL;
    struct tool_opts o = {.cls = argc > 1 ? argvbuf[1] : NULL, .mem = NULL, .intent = argc > 2 ? argvbuf[2] : NULL,
                          .cmd = argvbuf};
    struct buf b = {0};
    build_start(&b, &o);
    CHECK(b.len >= 2 && b.p[b.len - 1] == '\n');
    CHECK(memchr(b.p, '\n', b.len - 1) == NULL);  /* one line, whatever the argv held */
    CHECK(valid_utf8((unsigned char *)b.p, b.len));
    /* The argv array stays within its budget. A quote inside a string is escaped, so
     * the first `],"class":` is the array's end. */
    const char *head = "{\"v\":1,\"op\":\"tool_start\",\"argv\":[";
    CHECK(strncmp(b.p, head, strlen(head)) == 0);
    const char *end = strstr(b.p, "],\"class\":");
    CHECK(end && (size_t)(end - b.p) - strlen(head) <= ARGV_BUDGET);
    struct reply r;
    CHECK(reply_parse(b.p, b.len - 1, &r) == 0);
    reply_free(&r);
    /* Every string token in the line is strict JSON. */
    for (size_t i = 0; i < b.len;) {
        if (b.p[i] == '"')
            CHECK(strict_string((unsigned char *)b.p, b.len, &i));
        else
            i++;
    }
    buf_free(&b);
    for (size_t i = 0; i < argc; i++)
        free(argvbuf[i]);
}

static void check_lines(const uint8_t *d, size_t n)
{
    int p[2];
    if (n > 60000 || pipe2(p, O_CLOEXEC) < 0)
        return;
    if (write_all(p[1], (const char *)d, n) < 0)
        abort();
    close(p[1]);
    struct conn c = {.fd = p[0], .wake = -1};
    size_t seen = 0;
    for (;;) {
        char *line;
        size_t len;
        enum ev e = next_event(&c, 1000, &line, &len);
        if (e != EV_LINE)
            break;
        CHECK(len <= n && memchr(line, '\n', len) == NULL);
        seen += len + 1;
        CHECK(seen <= n);
        check_reply((const uint8_t *)line, len);
    }
    close(p[0]);
    buf_free(&c.in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0: check_reply(data + 1, size - 1); break;
    case 1: check_writer(data + 1, size - 1); break;
    case 2: check_start(data + 1, size - 1); break;
    case 3: check_lines(data + 1, size - 1); break;
    }
    return 0;
}
