/*
 * ioctl-clock: an LD_PRELOAD shim that times every ioctl(2) and close(2) of a process, for
 * ci/soak.sh's throughput figures (a fuzz target's exec/s beside the floor the kernel imposes).
 *
 *   cc -O2 -shared -fPIC -o ioctl-clock.so ci/ioctl-clock.c -ldl
 *   IOCTL_CLOCK_OUT=/tmp/clock LD_PRELOAD=$PWD/ioctl-clock.so some-program
 *
 * mmap(2) and munmap(2) are timed as well: unmapping a vCPU's kvm_run area can drop the last
 * reference to the VM and destroy it there.
 * Calls made on the main thread (tid == pid, where libFuzzer runs its loop) are summed per
 * ioctl request number, with the CLOCK_MONOTONIC times of the main thread's first and last call;
 * calls of other threads (the host target's vCPU supplier) are summed apart. close(2) is timed
 * too: closing a VM's last fd destroys the VM, which is kernel time the fuzzer cannot avoid.
 * At exit the sums go to $IOCTL_CLOCK_OUT.<pid> as lines "main <request-hex> <count> <ns>",
 * "other <request-hex> <count> <ns>" (request "close", "mmap" or "munmap" for those calls) and "span <first-ns> <last-ns>".
 * The cost of the clock itself (two vDSO clock_gettime calls, tens of ns) is inside the sums.
 *
 * Not part of the floor, but where the rest of the loop's time goes: futex(2) calls made through
 * syscall(3) (how Rust's std waits on a channel or a lock: the main thread waiting for the vCPU
 * supplier) are timed as request "futex", wake-ups (FUTEX_WAKE: waking it) as "futex-wake",
 * and at exit the main thread's own CPU time
 * (getrusage RUSAGE_THREAD) is written as "cpu <user-ns> <system-ns>": loop wall time minus CPU
 * time is time the main thread was off the CPU (waiting or preempted by other threads).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 256
/* Pseudo request numbers for the other timed calls (no KVM ioctl number has these values). */
#define CLOSE_REQ (~0UL)
#define MMAP_REQ (~1UL)
#define MUNMAP_REQ (~2UL)
#define FUTEX_REQ (~3UL)
#define FUTEX_WAKE_REQ (~4UL)

struct slot {
	_Atomic unsigned long req; /* 0 = free */
	_Atomic unsigned long count;
	_Atomic unsigned long long ns;
};

/* [0] the main thread, [1] every other thread. */
static struct slot table[2][SLOTS];
static _Atomic unsigned long long first_ns, last_ns;
static int (*real_ioctl)(int, unsigned long, void *);
static int (*real_close)(int);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);
static long (*real_syscall)(long, ...);
static pid_t pid;

static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* The calling thread's id, asked of the kernel once per thread: glibc's gettid() is a system
 * call every time (~140 ns on the nested test host), and made after every timed call it cost the
 * measured program ~1 % of its loop, time the figures then counted against the harness. */
static __thread pid_t own_tid __attribute__((tls_model("initial-exec")));

static void account(unsigned long req, unsigned long long t0, unsigned long long t1)
{
	if (!own_tid)
		own_tid = gettid();
	int main_thread = own_tid == pid;
	struct slot *s = table[main_thread ? 0 : 1];
	unsigned long h = (req ^ (req >> 8)) % SLOTS;
	for (int i = 0; i < SLOTS; i++, h = (h + 1) % SLOTS) {
		unsigned long cur = atomic_load_explicit(&s[h].req, memory_order_relaxed);
		if (cur == 0) {
			unsigned long zero = 0;
			if (!atomic_compare_exchange_strong(&s[h].req, &zero, req) && zero != req)
				continue;
			cur = req;
		}
		if (cur != req)
			continue;
		if (main_thread) {
			/* Only the main thread writes its table: no locked instruction per call (one
			 * would cost the measured loop more than the clock reads do). */
			atomic_store_explicit(&s[h].count,
					      atomic_load_explicit(&s[h].count, memory_order_relaxed) + 1,
					      memory_order_relaxed);
			atomic_store_explicit(&s[h].ns,
					      atomic_load_explicit(&s[h].ns, memory_order_relaxed) + (t1 - t0),
					      memory_order_relaxed);
		} else {
			atomic_fetch_add_explicit(&s[h].count, 1, memory_order_relaxed);
			atomic_fetch_add_explicit(&s[h].ns, t1 - t0, memory_order_relaxed);
		}
		break;
	}
	if (main_thread) {
		if (!atomic_load_explicit(&first_ns, memory_order_relaxed))
			atomic_store_explicit(&first_ns, t0, memory_order_relaxed);
		atomic_store_explicit(&last_ns, t1, memory_order_relaxed);
	}
}

/* A forked child (libFuzzer's -fork mode) is a process of its own: its main thread is the one
 * that forked, and its sums start from zero. */
static void in_child(void)
{
	pid = getpid();
	own_tid = 0;
	memset(table, 0, sizeof(table));
	atomic_store(&first_ns, 0);
	atomic_store(&last_ns, 0);
}

__attribute__((constructor)) static void init(void)
{
	pid = getpid();
	pthread_atfork(NULL, NULL, in_child);
	real_ioctl = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
	real_mmap = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
	real_munmap = (int (*)(void *, size_t))dlsym(RTLD_NEXT, "munmap");
	real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
}

/* The syscall instruction itself: for calls made before init() has found libc's syscall(3). */
static long raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5)
{
	long ret;
	register long r10 __asm__("r10") = a3;
	register long r8 __asm__("r8") = a4;
	register long r9 __asm__("r9") = a5;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	if (ret < 0 && ret > -4096) {
		errno = (int)-ret;
		return -1;
	}
	return ret;
}

long syscall(long nr, ...)
{
	va_list ap;
	long a[6];
	va_start(ap, nr);
	for (int i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (!real_syscall)
		return raw_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	if (nr != SYS_futex)
		return real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	unsigned long long t0 = now_ns();
	long ret = real_syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	/* Wake-ups (FUTEX_WAKE 1, FUTEX_WAKE_BITSET 10) apart from the waits: a wake-up is the
	 * waker's own cost. */
	long op = a[1] & 0x7f;
	account(op == 1 || op == 10 ? FUTEX_WAKE_REQ : FUTEX_REQ, t0, now_ns());
	return ret;
}

int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	unsigned long long t0 = now_ns();
	int ret = real_ioctl(fd, req, arg);
	account(req, t0, now_ns());
	return ret;
}

int close(int fd)
{
	unsigned long long t0 = now_ns();
	int ret = real_close(fd);
	account(CLOSE_REQ, t0, now_ns());
	return ret;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (!real_mmap) /* called by the dynamic loader before init */
		return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
	unsigned long long t0 = now_ns();
	void *ret = real_mmap(addr, len, prot, flags, fd, off);
	account(MMAP_REQ, t0, now_ns());
	return ret;
}

int munmap(void *addr, size_t len)
{
	if (!real_munmap)
		return syscall(SYS_munmap, addr, len);
	unsigned long long t0 = now_ns();
	int ret = real_munmap(addr, len);
	account(MUNMAP_REQ, t0, now_ns());
	return ret;
}

static const char *name(unsigned long req)
{
	switch (req) {
	case CLOSE_REQ: return "close";
	case MMAP_REQ: return "mmap";
	case MUNMAP_REQ: return "munmap";
	case FUTEX_REQ: return "futex";
	case FUTEX_WAKE_REQ: return "futex-wake";
	default: return NULL;
	}
}

__attribute__((destructor)) static void dump(void)
{
	const char *prefix = getenv("IOCTL_CLOCK_OUT");
	char path[4096];
	if (!prefix || getpid() != pid)
		return;
	/* One file per process: LD_PRELOAD reaches wrappers such as timeout(1) too. */
	snprintf(path, sizeof(path), "%s.%d", prefix, (int)pid);
	FILE *f = fopen(path, "w");
	if (!f)
		return;
	for (int t = 0; t < 2; t++)
		for (int i = 0; i < SLOTS; i++) {
			unsigned long req = atomic_load(&table[t][i].req);
			if (!req)
				continue;
			if (name(req))
				fprintf(f, "%s %s %lu %llu\n", t ? "other" : "main", name(req),
					atomic_load(&table[t][i].count), atomic_load(&table[t][i].ns));
			else
				fprintf(f, "%s %#lx %lu %llu\n", t ? "other" : "main", req,
					atomic_load(&table[t][i].count), atomic_load(&table[t][i].ns));
		}
	fprintf(f, "span %llu %llu\n", atomic_load(&first_ns), atomic_load(&last_ns));
	struct rusage ru;
	if (gettid() == pid && getrusage(RUSAGE_THREAD, &ru) == 0)
		fprintf(f, "cpu %llu %llu\n",
			(unsigned long long)ru.ru_utime.tv_sec * 1000000000ULL + ru.ru_utime.tv_usec * 1000ULL,
			(unsigned long long)ru.ru_stime.tv_sec * 1000000000ULL + ru.ru_stime.tv_usec * 1000ULL);
	fclose(f);
}
