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
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 256
/* Pseudo request numbers for the other timed calls (no KVM ioctl number has these values). */
#define CLOSE_REQ (~0UL)
#define MMAP_REQ (~1UL)
#define MUNMAP_REQ (~2UL)

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
static pid_t pid;

static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void account(unsigned long req, unsigned long long t0, unsigned long long t1)
{
	int main_thread = syscall(SYS_gettid) == pid;
	struct slot *s = table[main_thread ? 0 : 1];
	unsigned long h = (req ^ (req >> 8)) % SLOTS;
	for (int i = 0; i < SLOTS; i++, h = (h + 1) % SLOTS) {
		unsigned long cur = atomic_load(&s[h].req);
		if (cur == 0) {
			unsigned long zero = 0;
			if (!atomic_compare_exchange_strong(&s[h].req, &zero, req) && zero != req)
				continue;
			cur = req;
		}
		if (cur == req) {
			atomic_fetch_add(&s[h].count, 1);
			atomic_fetch_add(&s[h].ns, t1 - t0);
			break;
		}
	}
	if (main_thread) {
		unsigned long long zero = 0;
		atomic_compare_exchange_strong(&first_ns, &zero, t0);
		atomic_store(&last_ns, t1);
	}
}

__attribute__((constructor)) static void init(void)
{
	pid = getpid();
	real_ioctl = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
	real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
	real_mmap = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
	real_munmap = (int (*)(void *, size_t))dlsym(RTLD_NEXT, "munmap");
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
	fclose(f);
}
