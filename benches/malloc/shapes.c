/* Classic allocator benchmark shapes, written for percpu (after the well-known originals):
 *
 *   larson   server simulation: threads replace random blocks in a shared-out array, then hand
 *            the array to a new generation of threads (blocks freed by threads that did not
 *            allocate them, and threads that come and go)
 *   xmalloc  producer/consumer: half the threads allocate, the other half free what they get,
 *            passed in batches of 512 blocks under a lock, as the Lever-Boreham original passes
 *            them (in batches of 4096)
 *   scratch  cache-scratch: each thread repeatedly allocates a small object and writes it hard;
 *            an allocator that gives neighbouring threads one cache line loses (false sharing)
 *   mstress  churn: each thread keeps a window of live blocks of mixed sizes (some large),
 *            freeing and allocating at random, with reallocs
 *   small    single-threaded small-object churn: linked lists built and torn down
 *   bulk     single-threaded: 200,000 blocks of 32-127 bytes allocated into an array, then
 *            read and freed in reverse, again and again: what a program that builds and drops a
 *            large structure asks of the levels below the caches, with little work of its own
 *   handoff  xmalloc with each block passed on its own, under the lock: the lock's futex traffic,
 *            more than the allocator, sets its time (kept for comparison with earlier figures)
 *
 * usage: shapes SHAPE THREADS [SCALE]    prints: SHAPE THREADS SECONDS PEAK_RSS_KB */
#define _GNU_SOURCE
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static int threads;
static long scale = 1;

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *must(void *p) {
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void run_threads(int n, void *(*f)(void *), void **args) {
    pthread_t t[1024];
    for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, f, args ? args[i] : (void *)(intptr_t)i);
    for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
}

/* ---- larson ---- */
#define LARSON_SLOTS 1000
struct larson { void *slot[LARSON_SLOTS]; uint64_t rng; };

static void *larson_thread(void *arg) {
    struct larson *l = arg;
    for (long i = 0; i < 200000 * scale; i++) {
        int s = (int)(next(&l->rng) % LARSON_SLOTS);
        free(l->slot[s]);
        l->slot[s] = must(malloc(16 + next(&l->rng) % 1000));
        ((char *)l->slot[s])[0] = (char)i;
    }
    return NULL;
}

static void larson(void) {
    struct larson *ls = must(calloc((size_t)threads, sizeof *ls));
    void *args[1024];
    for (int t = 0; t < threads; t++) {
        ls[t].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1);
        for (int s = 0; s < LARSON_SLOTS; s++) ls[t].slot[s] = must(malloc(16 + next(&ls[t].rng) % 1000));
        args[t] = &ls[(t + 1) % threads]; /* each generation takes over a neighbour's blocks */
    }
    for (int generation = 0; generation < 10; generation++) run_threads(threads, larson_thread, args);
    for (int t = 0; t < threads; t++)
        for (int s = 0; s < LARSON_SLOTS; s++) free(ls[t].slot[s]);
    free(ls);
}

/* ---- producer/consumer pairs (xmalloc, handoff) ---- */
/* What a pair shares besides the blocks it passes: the last member of each shape's state, so the
 * state keeps the layout it was measured with. */
struct pair { pthread_mutex_t lock; pthread_cond_t cond; };

static void *(*pair_producer)(void *), *(*pair_consumer)(void *);

static void *run_pair(void *state) {
    pthread_t c;
    pthread_create(&c, NULL, pair_consumer, state);
    pair_producer(state);
    pthread_join(c, NULL);
    return NULL;
}

/* Half the threads produce, each with a consumer of its own; each pair's state is `size` bytes,
 * zeroed, with its `struct pair` at `pair_at`. */
static void run_pairs(size_t size, size_t pair_at, void *(*producer)(void *), void *(*consumer)(void *)) {
    int pairs = threads / 2 > 0 ? threads / 2 : 1;
    char *states = must(calloc((size_t)pairs, size));
    void *args[1024];
    pair_producer = producer;
    pair_consumer = consumer;
    for (int p = 0; p < pairs; p++) {
        struct pair *shared = (struct pair *)(states + (size_t)p * size + pair_at);
        pthread_mutex_init(&shared->lock, NULL);
        pthread_cond_init(&shared->cond, NULL);
        args[p] = states + (size_t)p * size;
    }
    run_threads(pairs, run_pair, args);
    free(states);
}

static long xmalloc_items(void) { return 2000000 * scale; }

/* ---- xmalloc ---- */
#define BATCH 512
/* At most 4096 blocks in flight per pair, as in `handoff`'s ring: six batches queued, one being
 * filled, one being freed. */
#define QUEUED_BATCHES 6
struct batch { struct batch *next; void *item[BATCH]; };
struct queue { struct batch *head, *tail; int queued; struct pair pair; };

static void *producer(void *arg) {
    struct queue *q = arg;
    uint64_t rng = (uint64_t)(uintptr_t)arg | 1;
    for (long i = 0; i < xmalloc_items(); i += BATCH) {
        struct batch *b = must(malloc(sizeof *b));
        b->next = NULL;
        for (int j = 0; j < BATCH; j++) {
            b->item[j] = must(malloc(16 + next(&rng) % 240));
            memset(b->item[j], 1, 16);
        }
        pthread_mutex_lock(&q->pair.lock);
        while (q->queued == QUEUED_BATCHES) pthread_cond_wait(&q->pair.cond, &q->pair.lock);
        if (q->tail) q->tail->next = b;
        else q->head = b;
        q->tail = b;
        q->queued++;
        pthread_cond_broadcast(&q->pair.cond);
        pthread_mutex_unlock(&q->pair.lock);
    }
    return NULL;
}

static void *consumer(void *arg) {
    struct queue *q = arg;
    for (long i = 0; i < xmalloc_items(); i += BATCH) {
        pthread_mutex_lock(&q->pair.lock);
        while (!q->head) pthread_cond_wait(&q->pair.cond, &q->pair.lock);
        struct batch *b = q->head;
        q->head = b->next;
        if (!q->head) q->tail = NULL;
        q->queued--;
        pthread_cond_broadcast(&q->pair.cond);
        pthread_mutex_unlock(&q->pair.lock);
        for (int j = 0; j < BATCH; j++) free(b->item[j]);
        free(b);
    }
    return NULL;
}

static void xmalloc(void) { run_pairs(sizeof(struct queue), offsetof(struct queue, pair), producer, consumer); }

/* ---- handoff: xmalloc, one block at a time ---- */
#define RING 4096
struct ring { void *item[RING]; volatile long head, tail; struct pair pair; };

static void *handoff_producer(void *arg) {
    struct ring *r = arg;
    uint64_t rng = (uint64_t)(uintptr_t)arg | 1;
    for (long i = 0; i < xmalloc_items(); i++) {
        void *p = must(malloc(16 + next(&rng) % 240));
        memset(p, 1, 16);
        pthread_mutex_lock(&r->pair.lock);
        while (r->head - r->tail == RING) pthread_cond_wait(&r->pair.cond, &r->pair.lock);
        r->item[r->head++ % RING] = p;
        pthread_cond_broadcast(&r->pair.cond);
        pthread_mutex_unlock(&r->pair.lock);
    }
    return NULL;
}

static void *handoff_consumer(void *arg) {
    struct ring *r = arg;
    for (long i = 0; i < xmalloc_items(); i++) {
        pthread_mutex_lock(&r->pair.lock);
        while (r->head == r->tail) pthread_cond_wait(&r->pair.cond, &r->pair.lock);
        void *p = r->item[r->tail++ % RING];
        pthread_cond_broadcast(&r->pair.cond);
        pthread_mutex_unlock(&r->pair.lock);
        free(p);
    }
    return NULL;
}

static void handoff(void) {
    run_pairs(sizeof(struct ring), offsetof(struct ring, pair), handoff_producer, handoff_consumer);
}

/* ---- cache-scratch ---- */
static void *scratch_thread(void *arg) {
    free(arg); /* the object main allocated for us, next to our neighbours' */
    for (long i = 0; i < 100000 * scale; i++) {
        volatile char *p = must(malloc(8));
        for (int w = 0; w < 1000; w++) p[w % 8] += (char)w;
        free((void *)p);
    }
    return NULL;
}

static void scratch(void) {
    void *args[1024];
    for (int t = 0; t < threads; t++) args[t] = must(malloc(8));
    run_threads(threads, scratch_thread, args);
}

/* ---- mstress ---- */
#define WINDOW 2000
static void *mstress_thread(void *arg) {
    uint64_t rng = 0x2545f4914f6cdd1dull * (uint64_t)((intptr_t)arg + 1);
    void **live = must(calloc(WINDOW, sizeof(void *)));
    for (long i = 0; i < 2000000 * scale; i++) {
        int s = (int)(next(&rng) % WINDOW);
        uint64_t r = next(&rng);
        size_t size = r % 100 == 0 ? 4096 + r % 60000 : 8 + r % 500;
        if (live[s] && r % 8 == 0) {
            live[s] = must(realloc(live[s], size));
        } else {
            free(live[s]);
            live[s] = must(malloc(size));
        }
        memset(live[s], (int)i, size < 64 ? size : 64);
    }
    for (int s = 0; s < WINDOW; s++) free(live[s]);
    free(live);
    return NULL;
}

static void mstress(void) { run_threads(threads, mstress_thread, NULL); }

/* ---- small ---- */
struct node { struct node *next; long value[3]; };

static void small(void) {
    uint64_t rng = 42;
    long sum = 0;
    for (long round = 0; round < 20 * scale; round++) {
        struct node *head = NULL;
        for (long i = 0; i < 200000; i++) {
            size_t size = sizeof(struct node) + next(&rng) % 96;
            struct node *n = must(malloc(size));
            n->next = head;
            n->value[0] = i;
            head = n;
        }
        while (head) {
            struct node *n = head;
            head = n->next;
            sum += n->value[0];
            free(n);
        }
    }
    if (sum == 42) puts("");
}

/* ---- bulk ---- */
#define BULK_BLOCKS 200000

static void bulk(void) {
    uint64_t rng = 7;
    void **blocks = must(malloc(BULK_BLOCKS * sizeof(void *)));
    long sum = 0;
    for (long round = 0; round < 20 * scale; round++) {
        for (long i = 0; i < BULK_BLOCKS; i++) {
            blocks[i] = must(malloc(32 + next(&rng) % 96));
            *(long *)blocks[i] = i;
        }
        for (long i = BULK_BLOCKS - 1; i >= 0; i--) {
            sum += *(long *)blocks[i];
            free(blocks[i]);
        }
    }
    free(blocks);
    if (sum == 42) puts("");
}

/* Peak RSS in KiB of this process image: VmHWM. getrusage's ru_maxrss would do, but it also
 * counts the image this process replaced with exec (the forking shell's, about 1.6 MiB), a floor
 * that hides the smallest programs' peaks. */
static long peak_rss_kib(void) {
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (status && fgets(line, sizeof line, status))
        if (!strncmp(line, "VmHWM:", 6)) kib = atol(line + 6);
    if (status) fclose(status);
    if (kib < 0) {
        struct rusage u;
        getrusage(RUSAGE_SELF, &u);
        kib = u.ru_maxrss;
    }
    return kib;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s larson|xmalloc|scratch|mstress|small|bulk|handoff THREADS [SCALE]\n", argv[0]);
        return 2;
    }
    threads = atoi(argv[2]);
    if (threads < 1 || threads > 1024) threads = 1;
    if (argc > 3) scale = atol(argv[3]) > 0 ? atol(argv[3]) : 1;
    double t0 = now();
    if (!strcmp(argv[1], "larson")) larson();
    else if (!strcmp(argv[1], "xmalloc")) xmalloc();
    else if (!strcmp(argv[1], "scratch")) scratch();
    else if (!strcmp(argv[1], "mstress")) mstress();
    else if (!strcmp(argv[1], "small")) small();
    else if (!strcmp(argv[1], "bulk")) bulk();
    else if (!strcmp(argv[1], "handoff")) handoff();
    else {
        fprintf(stderr, "unknown shape %s\n", argv[1]);
        return 2;
    }
    double t1 = now();
    printf("%s %d %.4f %ld\n", argv[1], threads, t1 - t0, peak_rss_kib());
    return 0;
}
