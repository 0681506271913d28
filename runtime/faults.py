"""Faults a running process can meet from outside, made into clean exits.

SIGBUS: the model is mapped, not read, so if its file is truncated (or replaced in
place) while we run, the next read of a page past the new end raises SIGBUS in
whichever thread touched it (often a kernel thread). Python cannot handle that
signal itself (its handlers run later, between bytecodes, and the faulting read
would repeat), so the kernel library installs a C handler that prints one line and
exits with status 2 (kernels/guard.c). That suits a command line; a server that must
stay up needs the fault turned into an error for one request instead (not done here:
it needs a recovery point around the kernel calls).
"""

import ctypes

SIGBUS_MESSAGE = ("error: the model file {path} was truncated or changed while in use; "
                  "leave it alone while llamazip runs, or copy it first")


def exit_cleanly_on_sigbus(lib, path):
    """Ask the kernel library `lib` to turn SIGBUS into one line and exit 2.
    Returns whether it could (libraries older than the handler cannot)."""
    fn = getattr(lib, "lz_sigbus_exit", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = ctypes.c_int
    message = SIGBUS_MESSAGE.format(path=path).encode("utf-8", "replace")
    return fn(message) == 0
