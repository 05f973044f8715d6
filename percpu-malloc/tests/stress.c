/* A multi-threaded malloc stress and conformance program for libpercpu_malloc.so.
 *
 * Threads allocate with every function of the malloc family and every alignment up to 1 MiB,
 * fill and check patterns, hand a share of their blocks to other threads to free (a mutex-
 * protected exchange), fork while they run (the child allocates at once), start and end 2,000
 * short-lived threads, and check the C edge cases. Prints "ok" (and nothing that depends on the
 * allocator), so a plain run and an LD_PRELOAD run print the same. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define THREADS 16
#define ROUNDS 20000
#define EXCHANGE 1024

static void *exchange[EXCHANGE];
static size_t exchange_size[EXCHANGE];
static pthread_mutex_t exchange_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long long checksum[THREADS];

#define CHECK(cond)                                                                \
    do {                                                                           \
        if (!(cond)) {                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1);                                                               \
        }                                                                          \
    } while (0)

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void fill(unsigned char *p, size_t n, unsigned char seed) {
    for (size_t i = 0; i < n; i += (n > 4096 ? 512 : 1)) p[i] = (unsigned char)(seed + i);
    if (n) p[n - 1] = seed;
}

static void check(const unsigned char *p, size_t n, unsigned char seed) {
    for (size_t i = 0; i + 1 < n; i += (n > 4096 ? 512 : 1)) CHECK(p[i] == (unsigned char)(seed + i));
    if (n) CHECK(p[n - 1] == seed);
}

static size_t pick_size(uint64_t *rng) {
    uint64_t r = next(rng);
    switch (r % 16) {
    case 0: return r % 200000;      /* large */
    case 1: return r % 40000;       /* around the largest class */
    default: return r % 1024;       /* small */
    }
}

static void *thread_main(void *arg) {
    int id = (int)(intptr_t)arg;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(id + 1);
    void *held[64] = {0};
    size_t held_size[64] = {0};
    for (int round = 0; round < ROUNDS; round++) {
        int slot = (int)(next(&rng) % 64);
        if (held[slot]) {
            check(held[slot], held_size[slot], (unsigned char)slot);
            if (next(&rng) % 4 == 0) {
                /* Hand it to whichever thread takes this exchange slot next. */
                int e = (int)(next(&rng) % EXCHANGE);
                pthread_mutex_lock(&exchange_lock);
                void *old = exchange[e];
                exchange[e] = held[slot];
                exchange_size[e] = held_size[slot];
                pthread_mutex_unlock(&exchange_lock);
                free(old);
            } else {
                free(held[slot]);
            }
            held[slot] = NULL;
        }
        size_t size = pick_size(&rng);
        void *p = NULL;
        size_t align = 16;
        switch (next(&rng) % 8) {
        case 0: p = malloc(size); break;
        case 1:
            p = calloc(1, size);
            for (size_t i = 0; i < size; i += 64) CHECK(((unsigned char *)p)[i] == 0);
            break;
        case 2: {
            p = malloc(size / 2 + 1);
            fill(p, size / 2 + 1, 7);
            p = realloc(p, size + 1);
            check(p, size / 2 + 1, 7);
            size += 1;
            break;
        }
        case 3:
            align = (size_t)1 << (next(&rng) % 21);
            if (align < sizeof(void *)) align = sizeof(void *);
            CHECK(posix_memalign(&p, align, size) == 0);
            break;
        case 4:
            align = (size_t)1 << (next(&rng) % 21);
            size = (size + align - 1) & ~(align - 1); /* C11 asks for a multiple */
            p = aligned_alloc(align, size);
            break;
        case 5:
            align = (size_t)1 << (next(&rng) % 13);
            p = memalign(align, size);
            break;
        case 6: p = valloc(size); align = (size_t)sysconf(_SC_PAGESIZE); break;
        default: p = reallocarray(NULL, size, 1); break;
        }
        CHECK(p != NULL);
        CHECK(((uintptr_t)p & (align - 1)) == 0);
        CHECK(malloc_usable_size(p) >= size);
        fill(p, size, (unsigned char)slot);
        held[slot] = p;
        held_size[slot] = size;
        checksum[id] += size;
    }
    for (int i = 0; i < 64; i++) {
        if (held[i]) check(held[i], held_size[i], (unsigned char)i);
        free(held[i]);
    }
    return NULL;
}

static void *short_main(void *arg) {
    (void)arg;
    uint64_t rng = (uint64_t)(uintptr_t)&rng | 1;
    void *mine[8];
    for (int i = 0; i < 8; i++) {
        size_t size = pick_size(&rng);
        mine[i] = malloc(size);
        CHECK(mine[i] != NULL);
        fill(mine[i], size, 9);
        check(mine[i], size, 9);
    }
    for (int i = 1; i < 8; i++) free(mine[i]);
    int e = (int)(next(&rng) % EXCHANGE);
    pthread_mutex_lock(&exchange_lock);
    void *old = exchange[e];
    exchange[e] = mine[0];
    pthread_mutex_unlock(&exchange_lock);
    free(old);
    return NULL;
}

static void edge_cases(void) {
    free(NULL);
    errno = 0;
    CHECK(malloc((size_t)-1 / 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)-1 / 2, 4) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(reallocarray(NULL, (size_t)-1 / 2, 4) == NULL && errno == ENOMEM);
    void *p = NULL;
    CHECK(posix_memalign(&p, 3, 16) == EINVAL);
    CHECK(posix_memalign(&p, sizeof(void *) / 2, 16) == EINVAL);
    CHECK(malloc_usable_size(NULL) == 0);
    p = malloc(0);
    CHECK(p != NULL);
    free(p);
    p = malloc(100);
    CHECK(realloc(p, 0) == NULL); /* glibc: frees p */
    p = realloc(NULL, 50);
    CHECK(p != NULL);
    free(p);
    p = pvalloc(1);
    CHECK(p != NULL && ((uintptr_t)p & ((size_t)sysconf(_SC_PAGESIZE) - 1)) == 0);
    CHECK(malloc_usable_size(p) >= (size_t)sysconf(_SC_PAGESIZE));
    free(p);
    /* Growing realloc chains keep their prefix through small, large and remapped blocks. */
    unsigned char *q = malloc(8);
    size_t n = 8;
    fill(q, n, 3);
    for (size_t next_size = 16; next_size <= (64u << 20); next_size *= 3) {
        q = realloc(q, next_size);
        CHECK(q != NULL);
        check(q, n, 3);
        fill(q, next_size, 3);
        n = next_size;
    }
    free(q);
    malloc_trim(0);
}

int main(void) {
    edge_cases();
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&threads[i], NULL, thread_main, (void *)(intptr_t)i) == 0);
    /* fork while the threads allocate: the child must be able to allocate at once. */
    for (int f = 0; f < 10; f++) {
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            void *blocks[1000];
            for (int i = 0; i < 1000; i++) {
                blocks[i] = malloc((size_t)(i * 37 % 5000));
                if (!blocks[i]) _exit(3);
                memset(blocks[i], i, (size_t)(i * 37 % 5000));
            }
            for (int i = 0; i < 1000; i++) free(blocks[i]);
            _exit(0);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    for (int i = 0; i < THREADS; i++) CHECK(pthread_join(threads[i], NULL) == 0);
    for (int i = 0; i < EXCHANGE; i++) {
        free(exchange[i]);
        exchange[i] = NULL;
    }
    /* 2,000 short-lived threads, each leaving a block for the next batch to free. */
    for (int batch = 0; batch < 40; batch++) {
        pthread_t t[50];
        for (int i = 0; i < 50; i++) CHECK(pthread_create(&t[i], NULL, short_main, NULL) == 0);
        for (int i = 0; i < 50; i++) CHECK(pthread_join(t[i], NULL) == 0);
    }
    for (int i = 0; i < EXCHANGE; i++) free(exchange[i]);
    unsigned long long total = 0;
    for (int i = 0; i < THREADS; i++) total += checksum[i];
    CHECK(total > 0);
    printf("ok\n");
    return 0;
}
