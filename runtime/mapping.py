"""Read-only shared memory maps of a region of a file, with a raw address.

The weights are read in place by C kernels, so we need both a Python buffer (for
the GGUF parser and the NumPy oracle) and the address of the mapped bytes (for
ctypes). Python's own mmap only hands out an address for writable maps, so we call
libc's mmap directly; PROT_READ + MAP_SHARED means the pages are the page cache's
own, counted in RssFile and never copied into the process.
"""

import ctypes
import mmap
import os
import stat

from runtime.errors import UserError

_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_int64]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class FileRegion:
    """`length` bytes of `path` from `offset`, mapped read-only and shared.

    `buf` is a memoryview of unsigned bytes over the region; `addr` is the address
    of its first byte. The offset need not be page aligned: the map starts at the
    page below it and `addr`/`buf` skip the slack.
    """

    def __init__(self, path, offset=0, length=None):
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise UserError(f"cannot open {path}: {e.strerror}; check the path") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else \
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
                raise UserError(f"{path} is {kind}; pass a .gguf model file")
            file_size = st.st_size
            if length is None:
                length = file_size - offset
            if offset < 0 or length < 0 or offset + length > file_size:
                raise UserError(f"{path}: region {offset}+{length} lies outside the "
                                f"{file_size}-byte file; the file is truncated")
            page = mmap.ALLOCATIONGRANULARITY
            map_offset = offset - offset % page
            self._slack = offset - map_offset
            self._map_len = max(1, length + self._slack)
            base = _libc.mmap(None, self._map_len, _PROT_READ, _MAP_SHARED, fd, map_offset)
            if base in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise UserError(f"cannot map {path}: {os.strerror(err)}")
        finally:
            os.close(fd)
        self._base = base
        self.path = path
        self.offset = offset
        self.length = length
        self.addr = base + self._slack
        raw = (ctypes.c_ubyte * length).from_address(self.addr)
        self.buf = memoryview(raw).cast("B").toreadonly()

    def mapping(self):
        """(address, length) of the whole page-aligned map, slack included."""
        return self._base, self._map_len

    def close(self):
        # Views into the region must not outlive it; callers drop them first.
        if self._base is not None:
            self.buf = None
            _libc.munmap(self._base, self._map_len)
            self._base = None

    def __len__(self):
        return self.length
