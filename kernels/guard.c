// A clean exit instead of a crash when a mapped model file shrinks under a running
// process: the pages past the new end are gone, and the next read of one raises
// SIGBUS in whichever thread touched it. The command line cannot recover the
// computation, so it asks for this: one line on stderr (set beforehand, since a
// signal handler may only call async-signal-safe functions) and exit status 2.
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "quants.h"

static char bus_message[1024];
static size_t bus_length;

static int bus_fired;

static void on_sigbus(int sig) {
    (void)sig;
    // Several pool threads may fault at once: the first says it and ends the
    // process; the others wait for that (a lock-free exchange is signal-safe).
    if (__atomic_exchange_n(&bus_fired, 1, __ATOMIC_SEQ_CST))
        for (;;) pause();
    if (bus_length) {
        ssize_t n = write(2, bus_message, bus_length);
        (void)n;
    }
    _exit(2);
}

// Install the handler; `message` (one line, newline added) is what it prints.
LZ_API int lz_sigbus_exit(const char *message) {
    size_t n = message ? strlen(message) : 0;
    if (n > sizeof bus_message - 2) n = sizeof bus_message - 2;
    memcpy(bus_message, message, n);
    bus_message[n] = '\n';
    bus_length = n + 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigbus;
    sigemptyset(&sa.sa_mask);
    return sigaction(SIGBUS, &sa, NULL);
}
