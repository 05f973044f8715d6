/* Loads libpercpu_malloc.so with dlopen while threads already run, then uses its malloc family
 * through the handle from all of them, handing blocks between threads.
 *
 * The library keeps each thread's rseq registration in initial-exec TLS, which glibc must find
 * room for at dlopen time and set up for threads that started before it. A thread that read
 * another's registration would break per-CPU exclusivity: blocks handed out twice, caught by the
 * pattern checks below. Prints "ok" and exits 0, or says what broke and exits 1.
 *
 * usage: dlopen LIBRARY */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define ROUNDS 200000
#define SHARED 256

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static size_t (*lib_usable_size)(void *);
static pthread_barrier_t loaded;
static _Atomic(unsigned char *) shared[SHARED];

static void fail(const char *what) {
    fprintf(stderr, "%s\n", what);
    exit(1);
}

/* A block holds its size in its first word and a fill byte derived from it everywhere else. */
static unsigned char *make(uint64_t *rng) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    size_t size = 16 + *rng % 2000;
    unsigned char *p = lib_malloc(size);
    if (!p) fail("malloc returned NULL");
    if (lib_usable_size(p) < size) fail("usable size below the request");
    memcpy(p, &size, sizeof size);
    memset(p + sizeof size, (int)(size * 131 % 251), size - sizeof size);
    return p;
}

static void check_and_free(unsigned char *p) {
    if (!p) return;
    size_t size;
    memcpy(&size, p, sizeof size);
    if (size < 16 || size >= 2016) fail("a block's size word was overwritten");
    for (size_t i = sizeof size; i < size; i++)
        if (p[i] != (unsigned char)(size * 131 % 251)) fail("a block's contents were overwritten");
    lib_free(p);
}

static void *worker(void *arg) {
    uint64_t rng = 0x9e3779b97f4a7c15ull * ((uintptr_t)arg + 1);
    pthread_barrier_wait(&loaded); /* started before the library was loaded */
    unsigned char *own[64] = {0};
    for (long i = 0; i < ROUNDS; i++) {
        int slot = (int)(i % 64);
        check_and_free(own[slot]);
        own[slot] = make(&rng);
        if (i % 4 == 0) { /* trade one with whichever thread put a block there last */
            unsigned char *theirs = atomic_exchange(&shared[rng % SHARED], own[slot]);
            own[slot] = NULL;
            check_and_free(theirs);
        }
    }
    for (int slot = 0; slot < 64; slot++) check_and_free(own[slot]);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s LIBRARY\n", argv[0]);
        return 2;
    }
    pthread_t threads[THREADS];
    pthread_barrier_init(&loaded, NULL, THREADS + 1);
    for (long t = 0; t < THREADS; t++)
        if (pthread_create(&threads[t], NULL, worker, (void *)t)) fail("pthread_create");
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) fail(dlerror());
    lib_malloc = (void *(*)(size_t))dlsym(lib, "malloc");
    lib_free = (void (*)(void *))dlsym(lib, "free");
    lib_usable_size = (size_t(*)(void *))dlsym(lib, "malloc_usable_size");
    if (!lib_malloc || !lib_free || !lib_usable_size) fail("missing symbols");
    pthread_barrier_wait(&loaded);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    for (int s = 0; s < SHARED; s++) check_and_free(atomic_exchange(&shared[s], NULL));
    puts("ok");
    return 0;
}
