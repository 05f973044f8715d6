/* A diagnostic beside shapes.c: larson's inner loop on one thread, with the sizes it asks for
 * chosen by MODE, to see what the mix of size classes costs an allocator apart from threads.
 * Each of 8 M iterations frees a random one of 1000 live blocks and allocates a new one:
 *
 *   one     always 256 bytes (one class)
 *   two     16 or 516 bytes at random (two classes)
 *   same    two classes, each new block the size of the block just freed
 *   other   two classes, each new block the other size
 *   many    16 to 1015 bytes at random (about 20 classes, as larson)
 *   touch   as many, writing the first byte of each new block
 *
 * usage: classes MODE    prints: classes MODE SECONDS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 1000
#define ITERATIONS 8000000L

static uint64_t next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum mode { ONE, TWO, SAME, OTHER, MANY, TOUCH };

static size_t pick(enum mode mode, uint64_t *rng, size_t freed) {
    uint64_t r = next(rng); /* drawn in every mode, so each does the same arithmetic */
    switch (mode) {
    case ONE: return 256;
    case TWO: return 16 + (r % 2) * 500;
    case SAME: return freed;
    case OTHER: return freed == 16 ? 516 : 16;
    default: return 16 + r % 1000;
    }
}

int main(int argc, char **argv) {
    static const char *names[] = {"one", "two", "same", "other", "many", "touch"};
    int mode = -1;
    for (int m = 0; argc == 2 && m < 6; m++)
        if (!strcmp(argv[1], names[m])) mode = m;
    if (mode < 0) {
        fprintf(stderr, "usage: %s one|two|same|other|many|touch\n", argv[0]);
        return 2;
    }
    static void *slot[SLOTS];
    static size_t size[SLOTS];
    uint64_t rng = 12345;
    for (int s = 0; s < SLOTS; s++) {
        size[s] = mode == SAME || mode == OTHER ? pick(TWO, &rng, 0) : pick(mode, &rng, 0);
        if (!(slot[s] = malloc(size[s]))) return 1;
    }
    double t0 = now();
    for (long i = 0; i < ITERATIONS; i++) {
        int s = (int)(next(&rng) % SLOTS);
        free(slot[s]);
        size[s] = pick(mode, &rng, size[s]);
        if (!(slot[s] = malloc(size[s]))) return 1;
        if (mode == TOUCH) ((volatile char *)slot[s])[0] = (char)i;
    }
    double t1 = now();
    for (int s = 0; s < SLOTS; s++) free(slot[s]);
    printf("classes %s %.4f\n", names[mode], t1 - t0);
    return 0;
}
