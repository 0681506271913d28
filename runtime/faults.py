"""The model file changing under a running process.

The weights are mapped, not read, so if the file is truncated (or replaced in place)
while we run, the next read of a page past its new end raises SIGBUS in whichever
thread touched it, often a kernel thread. Python cannot handle that signal itself,
so the kernel library's handler (kernels/sigbus.c) does, in one of two ways:
- a command line has nothing to save: one line on stderr and exit status 2;
- a server must stay up: zeros are mapped over the lost part so the computation in
  flight finishes, the fault is counted, and the server asks the count after each
  request, so the request in flight gets an error instead of garbage, later requests
  are refused and /health says 503.
"""

import ctypes

CLI_MESSAGE = ("error: the model file {path} was truncated or changed while in use; "
               "leave it alone while llamazip runs, or copy it first")
SERVER_MESSAGE = ("the model file {path} was truncated or changed while the server ran; "
                  "restart the server with an intact file")


class ModelGuard:
    """Registers the model's mapping with the kernel library's SIGBUS handler.
    `exit_on_fault`: the command line's answer (exit 2); else the server's (count)."""

    def __init__(self, lib, gguf, exit_on_fault):
        self.path = gguf.source
        self._count = None
        guard = getattr(lib, "lz_sigbus_guard", None) if lib is not None else None
        region = getattr(gguf, "_region", None)
        if guard is None or region is None:
            return      # the NumPy backend, or a model not mapped from a file
        guard.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        guard.restype = ctypes.c_int
        start, length = region.mapping()
        message = (CLI_MESSAGE.format(path=self.path).encode("utf-8", "replace")
                   if exit_on_fault else None)
        if guard(start, length, message) == 0:
            self._count = lib.lz_sigbus_count
            self._count.restype = ctypes.c_int

    @property
    def active(self):
        return self._count is not None

    def lost(self):
        """Whether the model file lost pages while we ran (counting guards)."""
        return self._count is not None and self._count() > 0

    def message(self):
        return SERVER_MESSAGE.format(path=self.path)
