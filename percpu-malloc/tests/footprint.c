/* Runs the allocator through its paths (every size class, large blocks, realloc, aligned
 * allocations, frees on other threads), then reports what the preloaded library (its path in
 * argv[1]) keeps resident: "code KiB RESIDENT of SIZE" for its executable mapping, and
 * "libgcc_s" if that library was loaded. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCKS 4096

static void *churn(void *arg) {
    void **blocks = arg;
    unsigned seed = 7;
    for (int round = 0; round < 8; round++) {
        for (int i = 0; i < BLOCKS; i++) {
            size_t size = (size_t)(rand_r(&seed) % 4096) + 1;
            if (i % 512 == 0) size = 300000; /* large: its own mapping */
            void *p = i % 7 == 0 ? calloc(1, size) : malloc(size);
            if (!p) abort();
            memset(p, i, size < 64 ? size : 64);
            if (i % 5 == 0) p = realloc(p, size * 2);
            if (!p) abort();
            free(blocks[i]);
            blocks[i] = p;
        }
        void *aligned;
        if (posix_memalign(&aligned, 4096, 100) != 0) abort();
        free(aligned);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    static void *blocks[4][BLOCKS];
    pthread_t threads[4];
    for (int t = 0; t < 4; t++) pthread_create(&threads[t], NULL, churn, blocks[t]);
    for (int t = 0; t < 4; t++) pthread_join(threads[t], NULL);
    /* Frees on a thread other than the one that allocated. */
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < BLOCKS; i++) free(blocks[t][i]);

    FILE *maps = fopen("/proc/self/smaps", "r");
    if (!maps) return 1;
    char line[4096];
    int in_code = 0, gcc_s = 0;
    unsigned long size = 0, resident = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long start, end;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3 && strchr(line, '/')) {
            in_code = strstr(line, argv[1]) && perms[2] == 'x';
            if (in_code) size += (end - start) / 1024;
            if (strstr(line, "libgcc_s")) gcc_s = 1;
        } else if (sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3) {
            in_code = 0;
        } else if (in_code && strncmp(line, "Rss:", 4) == 0) {
            resident += strtoul(line + 4, NULL, 10);
        }
    }
    printf("code KiB %lu of %lu\n", resident, size);
    if (gcc_s) printf("libgcc_s\n");
    return 0;
}
