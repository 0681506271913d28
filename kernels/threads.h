#ifndef LZ_THREADS_H
#define LZ_THREADS_H
#include <stdint.h>

// fn(arg, ith, nth) runs on the caller (ith = 0) and on those of the other nth - 1
// threads that join in time (ith unique among them); lz_pool_run returns when every
// one that started has returned. So fn must share its work by claiming tasks from
// a counter in arg, never by ith: the caller alone may end up doing all of it.
typedef void (*lz_job_fn)(void *arg, int ith, int nth);

void lz_pool_set_threads(int n);
int lz_pool_threads(void);
void lz_pool_run(lz_job_fn fn, void *arg);

#endif
