/* The replay workload: one small program, two roles, compiled at run time (gcc -O2).
 *
 *   alloc agent SCHEDULE RESULT     the agent: holds the baseline, runs the calls in order
 *   <any other name> ...            a tool call: follows the memory profile named by the
 *                                   environment (AGENTD_REPLAY_PROFILE), then exits
 *
 * The tool role ignores its argv, so the agent can start it as `<dir>/bash -c "<the trace's
 * command>"` (a symlink to this program): agentd then classifies and forecasts the call by
 * the real command line, as it would the real agent's.
 *
 * SCHEDULE (text):  "baseline BYTES\n" then per call "call GAP_S ARGV_FILE PROFILE_FILE\n";
 *                   ARGV_FILE holds the call's argv, NUL-separated; the final line
 *                   "tail GAP_S" is the idle time after the last call; "barrier DIR NAME N
 *                   TIMEOUT_S EXTRA_S" (before a call) creates DIR/NAME, waits until DIR holds N
 *                   entries (the harness adds an agent's entry when it exits early), then
 *                   EXTRA_S more, so several agents reach their largest memory together (the
 *                   wait is reported and is not replayed time).
 * PROFILE (text):   "DURATION_S\n" then "OFFSET_S BYTES\n" per step: at OFFSET_S after its
 *                   start the call holds BYTES (grows by touching new 1 MiB chunks, shrinks
 *                   by unmapping); it exits at DURATION_S or once its last step is done.
 * RESULT (text, appended line by line so a killed agent leaves what it did):
 *                   "start T" / "call I T_START T_END WAIT_STATUS" / "sync WAITED_S" / "done T"
 *                   (T: CLOCK_MONOTONIC s)
 * AGENTD_REPLAY_LATENCY (optional): file the tool role appends one line per chunk to:
 *                   microseconds to map and touch that chunk (allocation latency).
 * "hold DIR NAME N TIMEOUT_S" (a schedule line before a call): that call, once it holds its
 *                   largest step, creates DIR/NAME and stays there until DIR holds N entries
 *                   or TIMEOUT_S passed, then goes on with the rest of its profile; it appends
 *                   "sync WAITED_S" to the agent's RESULT (the tool role gets both through
 *                   AGENTD_REPLAY_HOLD and AGENTD_REPLAY_SYNC). Several agents then hold their
 *                   peaks at the same time by construction, whatever their allocation speed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1UL << 20)
#define MAX_CHUNKS 65536
#define MAX_ARGS 256

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    for (;;) {
        double d = t - now();
        if (d <= 0) return;
        struct timespec ts = {(time_t)d, (long)((d - (time_t)d) * 1e9)};
        if (nanosleep(&ts, NULL) == 0) return;
    }
}

static void put(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(int fd, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (fd >= 0 && n > 0 && write(fd, buf, (size_t)n) < 0) { /* best effort */ }
}

static void *touch_chunk(void) {
    char *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    long page = sysconf(_SC_PAGESIZE);
    for (unsigned long off = 0; off < CHUNK; off += (unsigned long)page) p[off] = 1;
    return p;
}

/* The agent's own heap: each page part random, part zeros, so compressed swap (zram's lzo)
 * keeps about 2.5x less than it takes, as for a real process's heap; a page holding a single
 * byte would compress to almost nothing and flatter any swap. Tool calls touch one byte per
 * page (they never swap). Done before the agent's start time, so no mode pays for it. */
static void *fill_chunk(void) {
    static unsigned long long x = 88172645463325252ULL;
    unsigned char *p = touch_chunk();
    if (!p) return NULL;
    long page = sysconf(_SC_PAGESIZE);
    for (unsigned long off = 0; off < CHUNK; off += (unsigned long)page)
        for (long i = 0; i < page * 3 / 8; i += 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            memcpy(p + off + i, &x, 8);
        }
    return p;
}

static double barrier(const char *dir, const char *name, int n, double timeout);

/* --- tool role ----------------------------------------------------------------------- */
static void *chunks[MAX_CHUNKS];

/* Wait at the hold barrier named by AGENTD_REPLAY_HOLD ("DIR NAME N TIMEOUT_S"); report
 * the wait into AGENTD_REPLAY_SYNC. Returns the seconds waited (0 without a hold). */
static double hold(void) {
    const char *spec = getenv("AGENTD_REPLAY_HOLD");
    char dir[4096], name[256];
    int n;
    double timeout;
    if (!spec || sscanf(spec, "%4095s %255s %d %lf", dir, name, &n, &timeout) != 4) return 0;
    double w = barrier(dir, name, n, timeout);
    const char *sync = getenv("AGENTD_REPLAY_SYNC");
    int fd = sync ? open(sync, O_WRONLY | O_APPEND) : -1;
    if (fd >= 0) {
        char line[64];
        int len = snprintf(line, sizeof line, "sync %.6f\n", w);
        if (write(fd, line, (size_t)len) < 0) { /* best effort */ }
        close(fd);
    }
    return w;
}

static int tool(void) {
    const char *prof = getenv("AGENTD_REPLAY_PROFILE");
    const char *lat = getenv("AGENTD_REPLAY_LATENCY");
    if (!prof) { fprintf(stderr, "alloc: AGENTD_REPLAY_PROFILE not set\n"); return 2; }
    FILE *f = fopen(prof, "r");
    if (!f) { perror(prof); return 2; }
    int lfd = lat && *lat ? open(lat, O_WRONLY | O_APPEND | O_CREAT, 0644) : -1;
    double t0 = now(), dur = 0, off;
    unsigned long long bytes;
    long have = 0;
    if (fscanf(f, "%lf", &dur) != 1) { fprintf(stderr, "alloc: %s: no duration\n", prof); return 2; }
    /* The largest step (the first of equals) is where a hold waits. */
    long pos = ftell(f), step = 0, top = -1;
    unsigned long long most = 0;
    while (fscanf(f, "%lf %llu", &off, &bytes) == 2) {
        if (top < 0 || bytes > most) { most = bytes; top = step; }
        step++;
    }
    fseek(f, pos, SEEK_SET);
    step = 0;
    while (fscanf(f, "%lf %llu", &off, &bytes) == 2) {
        sleep_until(t0 + off);
        long want = (long)((bytes + CHUNK / 2) / CHUNK);
        if (want > MAX_CHUNKS) want = MAX_CHUNKS;
        char line[4096];
        size_t len = 0;
        while (have < want) {
            double a = now();
            void *p = touch_chunk();
            if (!p) { fprintf(stderr, "alloc: mmap: %s\n", strerror(errno)); return 3; }
            chunks[have++] = p;
            if (lfd >= 0) {
                len += (size_t)snprintf(line + len, sizeof line - len, "%.0f\n", (now() - a) * 1e6);
                if (len > sizeof line - 32) { if (write(lfd, line, len) < 0) {} len = 0; }
            }
        }
        if (lfd >= 0 && len && write(lfd, line, len) < 0) {}
        while (have > want) munmap(chunks[--have], CHUNK);
        if (step++ == top) t0 += hold();    /* the rest of the profile moves by the wait */
    }
    fclose(f);
    sleep_until(t0 + dur);
    return 0;
}

static int entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static double barrier(const char *dir, const char *name, int n, double timeout) {
    char path[8192];
    double t = now();
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) close(fd);
    while (entries(dir) < n && now() - t < timeout) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return now() - t;
}

/* --- agent role ---------------------------------------------------------------------- */
static char hold_spec[4608];   /* the next call's hold ("" = none) */
static const char *result_path;

static int run_call(const char *argv_file, const char *prof) {
    static char buf[65536];
    char *args[MAX_ARGS + 1];
    int fd = open(argv_file, O_RDONLY);
    if (fd < 0) { perror(argv_file); return -1; }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    int argc = 0;
    for (char *p = buf; p < buf + n && argc < MAX_ARGS; p += strlen(p) + 1) args[argc++] = p;
    args[argc] = NULL;
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return -1; }
    if (pid == 0) {
        setenv("AGENTD_REPLAY_PROFILE", prof, 1);
        if (hold_spec[0]) {
            setenv("AGENTD_REPLAY_HOLD", hold_spec, 1);
            setenv("AGENTD_REPLAY_SYNC", result_path, 1);
        } else {
            unsetenv("AGENTD_REPLAY_HOLD");
        }
        execv(args[0], args);
        perror(args[0]);
        _exit(127);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return st;
}

static int agent(const char *sched, const char *result) {
    FILE *f = fopen(sched, "r");
    if (!f) { perror(sched); return 2; }
    int out = open(result, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (out < 0) { perror(result); return 2; }
    result_path = result;
    unsigned long long base = 0;
    if (fscanf(f, " baseline %llu", &base) != 1) { fprintf(stderr, "alloc: %s: no baseline\n", sched); return 2; }
    unsigned long n = (base + CHUNK / 2) / CHUNK;
    for (unsigned long i = 0; i < n; i++)
        if (!fill_chunk()) { perror("mmap"); return 3; }
    double t0 = now();
    put(out, "start %.6f\n", t0);
    char word[16], argv_file[4096], prof[4096];
    double gap;
    int i = 0;
    while (fscanf(f, " %15s", word) == 1) {
        if (strcmp(word, "tail") == 0) {
            if (fscanf(f, "%lf", &gap) == 1) sleep_until(now() + gap);
            break;
        }
        if (strcmp(word, "barrier") == 0) {
            char dir[4096], name[256];
            int n;
            double timeout, extra;
            if (fscanf(f, "%4095s %255s %d %lf %lf", dir, name, &n, &timeout, &extra) != 5) {
                fprintf(stderr, "alloc: %s: bad barrier\n", sched);
                return 2;
            }
            double w = barrier(dir, name, n, timeout), t = now();
            sleep_until(t + extra);
            put(out, "sync %.6f\n", w + now() - t);
            continue;
        }
        if (strcmp(word, "hold") == 0) {
            char dir[4096], name[256];
            int n;
            double timeout;
            if (fscanf(f, "%4095s %255s %d %lf", dir, name, &n, &timeout) != 4) {
                fprintf(stderr, "alloc: %s: bad hold\n", sched);
                return 2;
            }
            snprintf(hold_spec, sizeof hold_spec, "%s %s %d %.3f", dir, name, n, timeout);
            continue;
        }
        if (strcmp(word, "call") != 0 || fscanf(f, "%lf %4095s %4095s", &gap, argv_file, prof) != 3) {
            fprintf(stderr, "alloc: %s: bad line at call %d\n", sched, i);
            return 2;
        }
        sleep_until(now() + gap);
        double a = now();
        int st = run_call(argv_file, prof);
        hold_spec[0] = 0;
        put(out, "call %d %.6f %.6f %d\n", i++, a, now(), st);
    }
    put(out, "done %.6f\n", now());
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "agent") == 0) return agent(argv[2], argv[3]);
    return tool();
}
