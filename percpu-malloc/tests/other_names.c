/* The allocation functions' other names, under the preload: C23's free_sized and
 * free_aligned_sized (glibc 2.43 has them, so a program built there calls them), the obsolete
 * cfree (a compatibility symbol that old binaries bind to) and glibc's __libc_* entry points
 * (which malloc wrappers call for "the real malloc"). Each must reach the preloaded allocator:
 * a block one of them allocates is counted in the library's bytes in use (mallinfo2, which the
 * library answers), and a block one of them frees leaves that count as it was. Glibc's own
 * versions would take glibc's heap or abort on a block that is not glibc's.
 * Prints "ok", or what went wrong and exits 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void *__libc_malloc(size_t size);
void *__libc_calloc(size_t count, size_t size);
void *__libc_realloc(void *block, size_t size);
void __libc_free(void *block);
void *__libc_memalign(size_t align, size_t size);
void *__libc_valloc(size_t size);
void *__libc_pvalloc(size_t size);

/* cfree as an old binary binds it: glibc's base version, a compatibility symbol now (dlvsym
 * would not do: it accepts only a definition of that exact version). */
#if defined(__x86_64__)
__asm__(".symver old_cfree, cfree@GLIBC_2.2.5");
#elif defined(__aarch64__)
__asm__(".symver old_cfree, cfree@GLIBC_2.17");
#else
#error "glibc's base symbol version for this architecture"
#endif
void old_cfree(void *block);

static int failures;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            failures++;                                                                        \
        }                                                                                      \
    } while (0)

/* Bytes in blocks the allocator has handed out and not taken back, small and large. */
static size_t in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

/* Checks that `block` (from the call named `what`) is the allocator's: at least `size` usable
 * bytes, aligned to `align`, and counted as in use beyond `before`. */
static void allocated(const char *what, void *block, size_t size, size_t align, size_t before) {
    CHECK(block != NULL, "%s returned NULL", what);
    if (block == NULL) return;
    CHECK((uintptr_t)block % align == 0, "%s: %p is not aligned to %zu", what, block, align);
    CHECK(malloc_usable_size(block) >= size, "%s: %zu usable bytes", what,
          malloc_usable_size(block));
    CHECK(in_use() >= before + size, "%s: bytes in use %zu, %zu before", what, in_use(), before);
}

int main(void) {
    /* Looked up first: dlsym may allocate. */
    void (*free_sized)(void *, size_t) =
        (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    void (*free_aligned_sized)(void *, size_t, size_t) =
        (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    long page = sysconf(_SC_PAGESIZE);
    CHECK(free_sized != NULL, "no free_sized");
    CHECK(free_aligned_sized != NULL, "no free_aligned_sized");
    if (failures) return 1;

    size_t before = in_use();
    void *block = malloc(1000);
    allocated("malloc", block, 1000, 16, before);
    free_sized(block, 1000);
    CHECK(in_use() == before, "free_sized: bytes in use %zu, %zu before", in_use(), before);
    free_sized(NULL, 0);

    block = aligned_alloc(256, 1000);
    allocated("aligned_alloc", block, 1000, 256, before);
    free_aligned_sized(block, 256, 1000);
    CHECK(in_use() == before, "free_aligned_sized: bytes in use %zu, %zu before", in_use(),
          before);
    free_aligned_sized(NULL, 256, 0);

    block = malloc(300000);
    allocated("malloc (large)", block, 300000, 16, before);
    old_cfree(block);
    CHECK(in_use() == before, "cfree: bytes in use %zu, %zu before", in_use(), before);

    block = __libc_malloc(1000);
    allocated("__libc_malloc", block, 1000, 16, before);
    free(block);
    CHECK(in_use() == before, "free after __libc_malloc: bytes in use %zu, %zu before",
          in_use(), before);

    char *zeroed = __libc_calloc(10, 100);
    allocated("__libc_calloc", zeroed, 1000, 16, before);
    if (zeroed) {
        for (int i = 0; i < 1000; i++) CHECK(zeroed[i] == 0, "__libc_calloc: byte %d set", i);
        memset(zeroed, 7, 1000);
    }
    char *grown = __libc_realloc(zeroed, 5000);
    allocated("__libc_realloc", grown, 5000, 16, before);
    if (grown) {
        for (int i = 0; i < 1000; i++) CHECK(grown[i] == 7, "__libc_realloc: byte %d lost", i);
    }
    __libc_free(grown);
    CHECK(in_use() == before, "__libc_free: bytes in use %zu, %zu before", in_use(), before);

    block = __libc_memalign(4096, 100);
    allocated("__libc_memalign", block, 100, 4096, before);
    __libc_free(block);
    block = __libc_valloc(100);
    allocated("__libc_valloc", block, 100, (size_t)page, before);
    __libc_free(block);
    block = __libc_pvalloc(100);
    allocated("__libc_pvalloc", block, (size_t)page, (size_t)page, before);
    __libc_free(block);
    CHECK(in_use() == before, "after the aligned __libc_ calls: bytes in use %zu, %zu before",
          in_use(), before);

    if (failures) return 1;
    puts("ok");
    return 0;
}
