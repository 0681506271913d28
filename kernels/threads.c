// A small pthread pool: the calling thread plus n-1 workers run one job at a time.
//
// A token's forward pass makes a few hundred short calls, microseconds apart, so
// waking sleeping threads for each would cost more than the work. Workers spin on
// the job counter for a while (spin_ns) after each job, and only then sleep on a
// condition variable.
//
// Jobs share their work out by claiming tasks from a counter, so whoever is running
// does all of it: the caller never waits for a worker that has not joined. When the
// caller's own call returns, the job is closed; a worker that comes late (its core
// busy with another process, or descheduled on a loaded host) finds it closed and
// goes back to waiting, and the caller waits only for workers inside the job, which
// are finishing a task they claimed. Waiting for every worker at every call instead
// made one busy core stall each of the hundreds of calls per token for a time slice.
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

#define CLOSED ((uint64_t)1 << 31)
#define INSIDE (CLOSED - 1)

static struct {
    int n;                      // threads taking part, the caller included
    pthread_t tid[LZ_MAX_THREADS];
    atomic_uint gen;            // bumped once per job
    // the open job: its generation (high 32 bits), CLOSED, and the workers inside it
    _Atomic uint64_t state;
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
    .state = CLOSED,
};

// Join job `gen` if it is still open: 1 when joined.
static int enter_job(unsigned gen) {
    uint64_t s = atomic_load(&pool.state);
    while ((unsigned)(s >> 32) == gen && !(s & CLOSED))
        if (atomic_compare_exchange_weak(&pool.state, &s, s + 1)) return 1;
    return 0;
}

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
        if (!enter_job(seen)) continue;   // came too late: the caller did the work
        pool.fn(pool.arg, ith, pool.n);
        atomic_fetch_sub(&pool.state, 1);
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
    atomic_store(&pool.state, CLOSED);
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
    // the previous job is closed, so no worker reads fn and arg while they change
    pool.fn = fn;
    pool.arg = arg;
    unsigned gen = atomic_load(&pool.gen) + 1;
    atomic_store(&pool.state, (uint64_t)gen << 32);   // open, nobody inside
    atomic_store(&pool.gen, gen);
    if (atomic_load(&pool.sleeping)) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    fn(arg, 0, pool.n);
    atomic_fetch_or(&pool.state, CLOSED);
    unsigned spins = 0;
    while (atomic_load(&pool.state) & INSIDE) {
        cpu_relax();
        // a worker inside was descheduled mid-task: give it the core
        if (++spins > (1u << 12)) sched_yield();
    }
    pthread_mutex_unlock(&pool.run_mu);
}
