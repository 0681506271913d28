#ifndef LZ_THREADS_H
#define LZ_THREADS_H
#include <stdint.h>

// fn(arg, ith, nth) runs once on each of nth threads (ith = 0 is the caller);
// lz_pool_run returns when all have returned.
typedef void (*lz_job_fn)(void *arg, int ith, int nth);

void lz_pool_set_threads(int n);
int lz_pool_threads(void);
void lz_pool_run(lz_job_fn fn, void *arg);

#endif
