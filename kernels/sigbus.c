// What a process does when the model file it has mapped shrinks under it.
//
// The weights are mapped, not read: when the file is truncated (or replaced in
// place), the next read of a page past its new end raises SIGBUS in whichever thread
// touched it, usually a kernel worker in the middle of a matmul. Python cannot handle
// that signal (its handlers run between bytecodes, and the faulting read would
// repeat), and nothing can unwind the computation from a C handler. So the runtime
// registers the model's mapping here with one of two answers:
//  - exit: one line on stderr (written beforehand: a handler may only call
//    async-signal-safe functions) and exit status 2 — a command line has nothing to
//    save;
//  - count: map anonymous zero pages over the lost part of the region and return, so
//    the read repeats, sees zeros and the computation finishes on wrong data; the
//    fault is counted, and a server checks the count after each request, answers
//    with an error instead of the garbage and refuses later requests while staying
//    up to say why.
// A SIGBUS outside every registered region is not ours: the handler restores the
// default action and returns, so the fault repeats and ends the process as it would
// have.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "quants.h"

#define MAX_REGIONS 8

static uintptr_t region_start[MAX_REGIONS], region_end[MAX_REGIONS];
static int region_exits[MAX_REGIONS];
static volatile sig_atomic_t n_regions;
static volatile sig_atomic_t n_faults;
static uintptr_t page_size;

static char exit_message[1024];
static size_t exit_length;
static int exit_started;

static void exit_with_message(void) {
    // Several pool threads may fault at once: the first says it and ends the
    // process; the others wait for that (a lock-free exchange is signal-safe).
    if (__atomic_exchange_n(&exit_started, 1, __ATOMIC_SEQ_CST))
        for (;;) pause();
    if (exit_length) {
        ssize_t n = write(2, exit_message, exit_length);
        (void)n;
    }
    _exit(2);
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)context;
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < n_regions; i++) {
        if (at < region_start[i] || at >= region_end[i]) continue;
        if (region_exits[i]) exit_with_message();
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
// the handler. `message` non-NULL: a fault there prints it (one line, newline added)
// and exits 2; NULL: a fault there is zero-filled and counted. 0 on success, -1 when
// the table is full or sigaction fails.
LZ_API int lz_sigbus_guard(const void *start, size_t length, const char *message) {
    if (n_regions >= MAX_REGIONS) return -1;
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    if (message) {
        size_t n = strlen(message);
        if (n > sizeof exit_message - 2) n = sizeof exit_message - 2;
        memcpy(exit_message, message, n);
        exit_message[n] = '\n';
        exit_length = n + 1;
    }
    region_start[n_regions] = (uintptr_t)start;
    region_end[n_regions] = (uintptr_t)start + length;
    region_exits[n_regions] = message != NULL;
    n_regions++;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL);
}

// How many faults a counting region has had (0: the model is intact).
LZ_API int lz_sigbus_count(void) {
    return n_faults;
}
