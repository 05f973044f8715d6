/*
 * Where glibc registers no rseq (run with GLIBC_TUNABLES=glibc.pthread.rseq=0), the preloaded
 * library registers the area it exports as `rseq_sys_shared_area_v1`, which the other copies of
 * rseq-sys in the program share: in each thread, once it has allocated, the kernel must hold
 * exactly that registration (a second rseq(2) with the same area, length and signature is
 * refused with EBUSY), with the library as its one user so far.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define RSEQ_SIG 0x53053053u
#elif defined(__aarch64__)
#define RSEQ_SIG 0xd428bc00u
#else
#error "no rseq signature for this architecture"
#endif

/* The protocol's layout: 256 bytes of `struct rseq` and headroom, then the count of users. */
#define USERS_OFFSET 256

static void *volatile sink;

static int check(const char *who) {
    void *(*area_of)(void) = (void *(*)(void))dlsym(RTLD_DEFAULT, "rseq_sys_shared_area_v1");
    if (area_of == NULL) {
        printf("%s: the library exports no rseq_sys_shared_area_v1\n", who);
        return 1;
    }
    sink = malloc(24); /* the allocator registers this thread (kept, or GCC drops the pair) */
    free(sink);
    char *area = area_of();
    unsigned long feature = getauxval(27 /* AT_RSEQ_FEATURE_SIZE */);
    unsigned int len = feature > 32 ? (unsigned int)feature : 32;
    long rc = syscall(SYS_rseq, area, len, 0, RSEQ_SIG);
    int error = errno;
    int32_t cpu_id;
    uint32_t users;
    memcpy(&cpu_id, area + 4, sizeof cpu_id);
    memcpy(&users, area + USERS_OFFSET, sizeof users);
    if (rc != -1 || error != EBUSY || cpu_id < 0 || users != 1) {
        printf("%s: rseq %ld (%s), cpu_id %d, users %u\n", who, rc, strerror(error), cpu_id, users);
        return 1;
    }
    printf("%s: registered\n", who);
    return 0;
}

static void *thread_main(void *arg) {
    (void)arg;
    return (void *)(intptr_t)check("thread");
}

int main(void) {
    int failed = check("main");
    pthread_t thread;
    void *result;
    if (pthread_create(&thread, NULL, thread_main, NULL) != 0 || pthread_join(thread, &result) != 0)
        return 2;
    return failed || result != NULL;
}
