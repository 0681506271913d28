"""The model file under a running server: if it is truncated (or replaced in place),
the mapped weights lose pages and reading them raises SIGBUS. The kernel library's
handler (kernels/busfault.c) maps zeros over the lost part so the computation in
flight finishes, and counts the fault; here the server asks that count, so the
request in flight gets an error instead of garbage, later requests are refused, and
/health says 503 while the server stays up to tell."""

import ctypes


class ModelGuard:
    def __init__(self, lib, region, path):
        self.path = path
        self._count = None
        guard = getattr(lib, "lz_busfault_guard", None) if lib is not None else None
        if guard is None or region is None:
            return      # the NumPy backend, or a kernel library without the handler
        guard.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        guard.restype = ctypes.c_int
        start, length = region.mapping()
        if guard(start, length) == 0:
            self._count = lib.lz_busfault_count
            self._count.restype = ctypes.c_int

    @property
    def active(self):
        return self._count is not None

    def lost(self):
        """Whether the model file lost pages while we ran."""
        return self._count is not None and self._count() > 0

    def message(self):
        return (f"the model file {self.path} was truncated or changed while the server ran; "
                "restart the server with an intact file")
