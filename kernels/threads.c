// A small pthread pool: the calling thread plus n-1 workers run one job at a time.
//
// A token's forward pass makes a few hundred short calls, microseconds apart, so
// waking sleeping threads for each would cost more than the work. Workers spin on
// the job counter for a while (LZ_SPIN_NS) after each job, and only then sleep on
// a condition variable; the caller spins for the workers to finish.
// clock_gettime and friends are POSIX, hidden by -std=c11 unless asked for
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "threads.h"

#define LZ_MAX_THREADS 256

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

static struct {
    int n;                      // threads taking part, the caller included
    pthread_t tid[LZ_MAX_THREADS];
    atomic_uint gen;            // bumped once per job
    atomic_int pending;         // workers still running the current job
    atomic_int sleeping;        // workers blocked on cv
    atomic_int stop;
    lz_job_fn fn;
    void *arg;
    pthread_mutex_t mu;         // guards the sleep/wake handshake
    pthread_cond_t cv;
    pthread_mutex_t run_mu;     // one job at a time, whatever thread calls
    int64_t spin_ns;
    unsigned start_gen;
} pool = {
    .n = 1,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
    .run_mu = PTHREAD_MUTEX_INITIALIZER,
    .spin_ns = 2000000,
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *worker(void *p) {
    int ith = (int)(intptr_t)p;
    // the generation when we were created: a job published before this thread got
    // to run must still be seen as new
    unsigned seen = pool.start_gen;
    for (;;) {
        int64_t deadline = 0;
        unsigned spins = 0;
        while (atomic_load(&pool.gen) == seen && !atomic_load(&pool.stop)) {
            cpu_relax();
            if (++spins & 255) continue;
            // check the clock now and then, not each spin
            int64_t t = now_ns();
            if (!deadline) deadline = t + pool.spin_ns;
            else if (t > deadline) {
                // Sleep. `sleeping` is raised before gen is checked again (both
                // seq_cst), so a caller that bumps gen either sees us sleeping and
                // signals, or we see its new gen and do not wait.
                pthread_mutex_lock(&pool.mu);
                atomic_fetch_add(&pool.sleeping, 1);
                while (atomic_load(&pool.gen) == seen && !atomic_load(&pool.stop))
                    pthread_cond_wait(&pool.cv, &pool.mu);
                atomic_fetch_sub(&pool.sleeping, 1);
                pthread_mutex_unlock(&pool.mu);
                deadline = 0;
            }
        }
        if (atomic_load(&pool.stop)) return NULL;
        seen = atomic_load(&pool.gen);
        pool.fn(pool.arg, ith, pool.n);
        atomic_fetch_sub(&pool.pending, 1);
    }
}

static void stop_workers(void) {
    atomic_store(&pool.stop, 1);
    pthread_mutex_lock(&pool.mu);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 1; i < pool.n; i++) pthread_join(pool.tid[i], NULL);
    atomic_store(&pool.stop, 0);
    pool.n = 1;
}

// A forked child has only the forking thread: forget the workers (and the locks
// they may have held) so its kernel calls run single-threaded instead of waiting.
static void after_fork_child(void) {
    pool.n = 1;
    atomic_store(&pool.sleeping, 0);
    atomic_store(&pool.pending, 0);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pthread_mutex_init(&pool.run_mu, NULL);
}

void lz_pool_set_threads(int n) {
    static int atfork_done;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    if (n < 1) n = 1;
    if (n > LZ_MAX_THREADS) n = LZ_MAX_THREADS;
    pthread_mutex_lock(&pool.run_mu);
    if (n != pool.n) {
        stop_workers();
        pool.start_gen = atomic_load(&pool.gen);
        // musl's default thread stack is 128 KiB; kernels keep a few tiles on theirs
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 4 << 20);
        int started = 1;
        for (int i = 1; i < n; i++) {
            if (pthread_create(&pool.tid[i], &attr, worker, (void *)(intptr_t)i) != 0) break;
            started++;
        }
        pthread_attr_destroy(&attr);
        pool.n = started;
    }
    pthread_mutex_unlock(&pool.run_mu);
}

int lz_pool_threads(void) { return pool.n; }


void lz_pool_run(lz_job_fn fn, void *arg) {
    pthread_mutex_lock(&pool.run_mu);
    if (pool.n == 1) {
        fn(arg, 0, 1);
        pthread_mutex_unlock(&pool.run_mu);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    atomic_store(&pool.pending, pool.n - 1);
    atomic_fetch_add(&pool.gen, 1);
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    fn(arg, 0, pool.n);
    unsigned spins = 0;
    while (atomic_load(&pool.pending) > 0) {
        cpu_relax();
        // a worker descheduled (more threads than cores): give it the core
        if (++spins > (1u << 16)) sched_yield();
    }
    pthread_mutex_unlock(&pool.run_mu);
}
