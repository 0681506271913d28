// A server that outlives a model file truncated under it.
//
// The weights are mapped, not read: when the file shrinks, the next read of a page
// past its new end raises SIGBUS in whichever thread touched it, usually a kernel
// worker in the middle of a matmul. Nothing can unwind that computation from a
// signal handler, so this handler lets it finish on wrong data instead: it maps
// anonymous zero pages over the lost part of the registered region and returns, the
// read repeats and sees zeros. It counts the faults; the server checks the count
// after each request and answers with an error instead of the garbage, and refuses
// every later request (the model is gone), while staying up to say so.
//
// A SIGBUS at an address outside the registered regions is not ours: the handler
// restores the default action and returns, so the fault repeats and kills the
// process as it would have.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "quants.h"

#define MAX_REGIONS 8

static uintptr_t region_start[MAX_REGIONS], region_end[MAX_REGIONS];
static volatile sig_atomic_t n_regions;
static volatile sig_atomic_t n_faults;
static uintptr_t page_size;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < n_regions; i++) {
        if (at < region_start[i] || at >= region_end[i]) continue;
        // The file lost its tail: everything from this page to the region's end.
        uintptr_t from = at & ~(page_size - 1);
        void *p = mmap((void *)from, region_end[i] - from, PROT_READ,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p != MAP_FAILED) {
            n_faults++;
            return;
        }
        break;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
}

// Register [start, start + length) (page aligned: the start of a mapping) and install
// the handler. 0 on success, -1 when the table is full or sigaction fails.
LZ_API int lz_busfault_guard(const void *start, size_t length) {
    if (n_regions >= MAX_REGIONS) return -1;
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    region_start[n_regions] = (uintptr_t)start;
    region_end[n_regions] = (uintptr_t)start + length;
    n_regions++;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL);
}

// How many times a registered region lost pages (0: the model is intact).
LZ_API int lz_busfault_count(void) {
    return n_faults;
}
