// Read-bandwidth ceiling: how fast can T threads stream a buffer that does not fit
// in any cache? The yardstick for matrix x vector kernels, which read every weight
// once per token. Built and run by bench/bandwidth.py.
//
//     bandwidth MIB THREADS STREAMS REPS
//
// The threads claim 1 MiB chunks of a MIB-MiB buffer from a shared counter (as the
// kernels' thread pool hands out rows, so a thread descheduled by another process
// costs the pass its share, not the whole pass), and read each chunk as STREAMS
// parallel runs walked side by side (as a kernel reading several weight rows at once
// does), with 64-byte vector loads and 4 independent accumulators. Prints the best
// and the median GB/s over REPS passes, after one untimed warm pass.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef long long v8 __attribute__((vector_size(64), aligned(64)));

#define CHUNK ((size_t)1 << 20)

static size_t total_bytes;
static atomic_size_t next_chunk;
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
    (void)arg;
    for (int r = 0; r <= reps; r++) {
        pthread_barrier_wait(&start_line);
        v8 s = {0};
        for (;;) {
            size_t off = atomic_fetch_add(&next_chunk, CHUNK);
            if (off >= total_bytes) break;
            s += read_streams(buf + off, CHUNK, n_streams);
        }
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
    if (n_threads < 1 || n_streams < 1 || reps < 1 || total < CHUNK || n_streams > 64) {
        fprintf(stderr, "bandwidth: bad arguments\n");
        return 2;
    }
    total_bytes = total / CHUNK * CHUNK;
    buf = aligned_alloc(4096, total_bytes);
    if (!buf) return 1;
    memset(buf, 1, total_bytes);
    pthread_barrier_init(&start_line, NULL, n_threads + 1);
    pthread_barrier_init(&finish_line, NULL, n_threads + 1);
    pthread_t th[256];
    for (long i = 0; i < n_threads; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    double *gbs = calloc(reps, sizeof *gbs);
    size_t per = CHUNK / n_streams / 256 * 256 * n_streams;   // bytes read of each chunk
    for (int r = 0; r <= reps; r++) {
        atomic_store(&next_chunk, 0);
        pthread_barrier_wait(&start_line);
        double t0 = now();
        pthread_barrier_wait(&finish_line);
        double dt = now() - t0;
        if (r > 0) gbs[r - 1] = (double)per * (total_bytes / CHUNK) / dt / 1e9;
    }
    for (int i = 0; i < n_threads; i++) pthread_join(th[i], NULL);
    qsort(gbs, reps, sizeof *gbs, cmp);
    printf("%.2f %.2f\n", gbs[reps - 1], gbs[reps / 2]);
    return 0;
}
