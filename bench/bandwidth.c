// Read-bandwidth ceiling: how fast can T threads stream a buffer that does not fit
// in any cache? The yardstick for matrix x vector kernels, which read every weight
// once per token. Built and run by bench/bandwidth.py.
//
//     bandwidth MIB THREADS STREAMS REPS
//
// Each thread reads its own contiguous share of a MIB-MiB buffer (pages touched
// first, by the thread that will read them), split into STREAMS parallel runs that
// it walks side by side (as a kernel reading several weight rows at once does),
// with 64-byte vector loads and 4 independent accumulators. Prints the best and the
// median GB/s over REPS passes, after one untimed warm pass.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef long long v8 __attribute__((vector_size(64), aligned(64)));

static size_t share_bytes;
static int n_threads, n_streams;
static unsigned char *buf;
static pthread_barrier_t start_line, finish_line;
static volatile long long sink;
static int reps;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static v8 read_streams(const unsigned char *base, size_t bytes, int streams) {
    v8 a = {0}, b = {0}, c = {0}, d = {0};
    size_t per = bytes / streams / 256 * 256;
    for (size_t off = 0; off < per; off += 256)
        for (int s = 0; s < streams; s++) {
            const v8 *p = (const v8 *)(base + s * per + off);
            a += p[0]; b += p[1]; c += p[2]; d += p[3];
        }
    return a + b + c + d;
}

static void *worker(void *arg) {
    long id = (long)arg;
    unsigned char *mine = buf + id * share_bytes;
    memset(mine, 1, share_bytes);   // first touch: the reader's own pages
    for (int r = 0; r <= reps; r++) {
        pthread_barrier_wait(&start_line);
        v8 s = read_streams(mine, share_bytes, n_streams);
        sink += s[0] + s[7];
        pthread_barrier_wait(&finish_line);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: bandwidth MIB THREADS STREAMS REPS\n");
        return 2;
    }
    size_t total = (size_t)atol(argv[1]) << 20;
    n_threads = atoi(argv[2]);
    n_streams = atoi(argv[3]);
    reps = atoi(argv[4]);
    if (n_threads < 1 || n_streams < 1 || reps < 1 || total < (size_t)n_threads * n_streams * 4096) {
        fprintf(stderr, "bandwidth: bad arguments\n");
        return 2;
    }
    share_bytes = total / n_threads / 4096 * 4096;
    buf = aligned_alloc(4096, share_bytes * n_threads);
    if (!buf) return 1;
    pthread_barrier_init(&start_line, NULL, n_threads + 1);
    pthread_barrier_init(&finish_line, NULL, n_threads + 1);
    pthread_t th[256];
    for (long i = 0; i < n_threads; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    double *gbs = calloc(reps, sizeof *gbs);
    size_t per = share_bytes / n_streams / 256 * 256 * n_streams;
    for (int r = 0; r <= reps; r++) {
        pthread_barrier_wait(&start_line);
        double t0 = now();
        pthread_barrier_wait(&finish_line);
        double dt = now() - t0;
        if (r > 0) gbs[r - 1] = (double)per * n_threads / dt / 1e9;
    }
    for (int i = 0; i < n_threads; i++) pthread_join(th[i], NULL);
    qsort(gbs, reps, sizeof *gbs, cmp);
    printf("%.2f %.2f\n", gbs[reps - 1], gbs[reps / 2]);
    return 0;
}
