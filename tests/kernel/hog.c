/* Workloads for agentd's kernel tier: a memory hog, a counter, a spinner, a fork bomb.
 *
 * Compiled by tests/kernel/conftest.py at test time. The tests run under QEMU software
 * emulation where every Python process costs ~100x a native one, so the busy work is
 * done here and each test starts only a few processes.
 *
 *   hog alloc MIB STATE     touch MIB MiB of anonymous memory, 1 MiB at a time, storing the
 *                           MiB count done in STATE after each step; then sleep forever
 *   hog count STATE         increment a counter and store it in STATE, forever
 *   hog spin                burn CPU forever
 *   hog forkbomb N STATE    fork up to N children that sleep forever; store
 *                           "forked F failed E" in STATE; then sleep forever
 *
 * STATE is rewritten in place (pwrite at offset 0), so a reader always sees one whole
 * line, and the value survives the process being killed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024L * 1024L)

static int state_fd = -1;

static void open_state(const char *path)
{
	state_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (state_fd < 0) {
		perror(path);
		exit(2);
	}
}

static void store(const char *fmt, long a, long b)
{
	char buf[64];
	/* Fixed width, so a shorter value never leaves a tail of an older one. */
	int n = snprintf(buf, sizeof(buf), fmt, a, b);
	memset(buf + n, ' ', sizeof(buf) - 1 - n);
	buf[sizeof(buf) - 1] = '\n';
	if (pwrite(state_fd, buf, sizeof(buf), 0) != sizeof(buf))
		exit(3);
}

static void __attribute__((noreturn)) sleep_forever(void)
{
	for (;;)
		pause();
}

static int do_alloc(long mib)
{
	for (long i = 1; i <= mib; i++) {
		/* mmap, not malloc: each step is fresh anonymous memory the kernel must charge. */
		char *p = mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED) {
			perror("mmap");
			return 4;
		}
		for (long off = 0; off < MIB; off += 4096)
			p[off] = (char)(i + off);
		store("%ld %ld", i, 0);
	}
	sleep_forever();
}

static void __attribute__((noreturn)) do_count(void)
{
	for (long n = 1;; n++) {
		store("%ld %ld", n, 0);
		usleep(1000);
	}
}

static void __attribute__((noreturn)) do_spin(void)
{
	volatile unsigned long x = 0;
	for (;;)
		x++;
}

static int do_forkbomb(long n)
{
	long forked = 0, failed = 0;
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid == 0)
			sleep_forever();
		if (pid > 0)
			forked++;
		else if (errno == EAGAIN)
			failed++;
		else {
			perror("fork");
			return 5;
		}
	}
	store("forked %ld failed %ld", forked, failed);
	sleep_forever();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "alloc")) {
		open_state(argv[3]);
		return do_alloc(atol(argv[2]));
	}
	if (argc >= 3 && !strcmp(argv[1], "count")) {
		open_state(argv[2]);
		do_count();
	}
	if (argc >= 2 && !strcmp(argv[1], "spin"))
		do_spin();
	if (argc >= 4 && !strcmp(argv[1], "forkbomb")) {
		open_state(argv[3]);
		return do_forkbomb(atol(argv[2]));
	}
	fprintf(stderr, "usage: hog alloc MIB STATE | count STATE | spin | forkbomb N STATE\n");
	return 1;
}
