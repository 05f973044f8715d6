/* rseq-sys in an object loaded with dlopen, for the VMs of ci/qemu.sh (whose test binaries are
 * static and cannot dlopen): loads the probe of tests/dlopen.rs (tests/dlopen-probe/, 4 KiB of
 * TLS aligned to 128, so dynamic TLS reached through TLS descriptors) into a program with two
 * threads already running, then has five threads, all alive at once, report what the probe's
 * copy of rseq-sys sees. Each must have a registration of its own (glibc's there), the same on
 * the fast path, and TLS of its own, aligned.  usage: dlopen-host PROBE.so */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
typedef void (*probe_fn)(uintptr_t *);
static probe_fn probe;
static pthread_barrier_t loaded, done;
static uintptr_t seen[5][5];
static int failed;
static void report(int i) {
    probe(seen[i]);
    uintptr_t *r = seen[i];
    printf("thread %d: area=%#lx ks=%lu fast=%#lx/%lu scratch=%#lx\n", i, (unsigned long)r[0],
           (unsigned long)r[1], (unsigned long)r[2], (unsigned long)r[3], (unsigned long)r[4]);
    if (r[0] == 0 || r[1] < 20 || r[0] != r[2] || r[1] != r[3] || r[4] % 128) failed = 1;
}
static void *early(void *arg) { pthread_barrier_wait(&loaded); report((int)(intptr_t)arg); pthread_barrier_wait(&done); return 0; }
static void *late(void *arg) { report((int)(intptr_t)arg); pthread_barrier_wait(&done); return 0; }
int main(int argc, char **argv) {
    pthread_t t[4];
    pthread_barrier_init(&loaded, 0, 3);
    pthread_barrier_init(&done, 0, 5);
    pthread_create(&t[0], 0, early, (void *)1);
    pthread_create(&t[1], 0, early, (void *)2);
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { printf("dlopen: %s\n", dlerror()); return 1; }
    probe = (probe_fn)dlsym(h, "rseq_sys_probe");
    pthread_barrier_wait(&loaded);
    report(0);
    pthread_create(&t[2], 0, late, (void *)3);
    pthread_create(&t[3], 0, late, (void *)4);
    pthread_barrier_wait(&done); /* all alive: areas and TLS must be distinct */
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (seen[i][0] == seen[j][0] || seen[i][4] == seen[j][4]) failed = 1;
    printf("%s\n", failed ? "FAILED" : "all threads read their own registration");
    return failed;
}
