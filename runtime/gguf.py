"""GGUF reader over a buffer (a map of a file, or of a region inside a larger file).

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count,
u64 metadata count; the metadata key/value pairs; the tensor table (name, dims,
type, offset relative to the data section); padding to `general.alignment`; data.
Tensors are returned as views into the buffer, never copied.
"""

import struct

from runtime import ggml_types
from runtime.errors import UserError
from runtime.mapping import FileRegion

MAGIC = b"GGUF"

# metadata value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

_SCALAR = {
    UINT8: struct.Struct("<B"), INT8: struct.Struct("<b"), UINT16: struct.Struct("<H"),
    INT16: struct.Struct("<h"), UINT32: struct.Struct("<I"), INT32: struct.Struct("<i"),
    FLOAT32: struct.Struct("<f"), BOOL: struct.Struct("<?"), UINT64: struct.Struct("<Q"),
    INT64: struct.Struct("<q"), FLOAT64: struct.Struct("<d"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class TensorInfo:
    __slots__ = ("name", "shape", "type", "offset", "nbytes")

    def __init__(self, name, shape, type_id, offset, nbytes):
        self.name = name
        self.shape = shape      # ggml order: shape[0] is the contiguous (row) length
        self.type = type_id
        self.offset = offset    # absolute, from the start of the GGUF buffer
        self.nbytes = nbytes

    @property
    def n_elements(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def __repr__(self):
        return f"TensorInfo({self.name!r}, {self.shape}, {ggml_types.type_name(self.type)})"


def _decode(raw):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Some vocabularies hold raw byte pieces; keep them lossless.
        return raw.decode("utf-8", errors="surrogateescape")


class _Cursor:
    def __init__(self, buf, source):
        self.buf = buf
        self.pos = 0
        self.source = source

    def need(self, n):
        if self.pos + n > len(self.buf):
            raise UserError(f"{self.source}: the GGUF header is truncated "
                            f"(needs byte {self.pos + n}, file has {len(self.buf)}); "
                            "download the model again")

    def scalar(self, st):
        self.need(st.size)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def string(self):
        n = self.scalar(_U64)
        self.need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return _decode(raw)

    def value(self, vtype, key):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype = self.scalar(_U32)
            count = self.scalar(_U64)
            return self.array(etype, count, key)
        raise UserError(f"{self.source}: metadata key {key!r} has unknown value type {vtype}; "
                        "the file is damaged or from a newer GGUF version")

    def array(self, etype, count, key):
        if etype in _SCALAR:
            st = _SCALAR[etype]
            n = st.size * count
            self.need(n)
            fmt = "<%d%s" % (count, st.format[-1])
            values = list(struct.unpack_from(fmt, self.buf, self.pos))
            self.pos += n
            return values
        if etype == STRING:
            # Vocabularies are tens of thousands of short strings: decode in one pass.
            out = []
            buf, pos, end = self.buf, self.pos, len(self.buf)
            unpack = _U64.unpack_from
            for _ in range(count):
                if pos + 8 > end:
                    self.pos = pos
                    self.need(8)
                (n,) = unpack(buf, pos)
                pos += 8
                if pos + n > end:
                    self.pos = pos
                    self.need(n)
                out.append(_decode(bytes(buf[pos:pos + n])))
                pos += n
            self.pos = pos
            return out
        return [self.value(etype, key) for _ in range(count)]


class GGUFFile:
    """Parsed GGUF header over `buf` (any buffer: bytes, mmap, FileRegion.buf).

    `metadata` maps keys to Python values (arrays as lists); `tensors` maps names to
    TensorInfo in file order; `tensor_bytes(name)` is a zero-copy view of the data.
    `base_addr`, when given, is the address of buf[0], for kernels that read in place.
    """

    def __init__(self, buf, source="model", base_addr=None):
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        self.source = source
        self.base_addr = base_addr
        self._region = None
        cur = _Cursor(self.buf, source)
        if len(self.buf) < 4 or bytes(self.buf[:4]) != MAGIC:
            raise UserError(f"{source} is not a GGUF file (no GGUF magic); "
                            "pass a .gguf model file")
        cur.pos = 4
        self.version = cur.scalar(_U32)
        if self.version not in (2, 3):
            raise UserError(f"{source}: GGUF version {self.version} is not supported "
                            "(only 2 and 3); convert the model with a current llama.cpp")
        n_tensors = cur.scalar(_U64)
        n_kv = cur.scalar(_U64)
        if n_tensors > len(self.buf) or n_kv > len(self.buf):
            raise UserError(f"{source}: implausible GGUF counts; the file is damaged")

        self.metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.scalar(_U32)
            self.metadata[key] = cur.value(vtype, key)

        self.alignment = int(self.metadata.get("general.alignment", 32))
        if self.alignment <= 0 or self.alignment & (self.alignment - 1):
            raise UserError(f"{source}: general.alignment {self.alignment} is not a power of two")

        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar(_U32)
            if n_dims > 4:
                raise UserError(f"{source}: tensor {name!r} has {n_dims} dimensions (at most 4)")
            shape = tuple(cur.scalar(_U64) for _ in range(n_dims))
            type_id = cur.scalar(_U32)
            rel = cur.scalar(_U64)
            raw_infos.append((name, shape, type_id, rel))

        pad = (-cur.pos) % self.alignment
        self.data_offset = cur.pos + pad
        self.tensors = {}
        for name, shape, type_id, rel in raw_infos:
            nbytes = None
            if type_id in ggml_types.TYPES:
                _, block, size = ggml_types.TYPES[type_id]
                n = 1
                for d in shape:
                    n *= d
                if shape and shape[0] % block:
                    raise UserError(f"{source}: tensor {name!r} row of {shape[0]} is not a "
                                    f"multiple of the {ggml_types.type_name(type_id)} block")
                nbytes = n // block * size
            self.tensors[name] = TensorInfo(name, shape, type_id, self.data_offset + rel, nbytes)

    @classmethod
    def open(cls, path, offset=0, length=None):
        """Map `length` bytes of `path` from `offset` and parse them as GGUF."""
        import os
        if not os.path.exists(path):
            raise UserError(f"model file not found: {path}; check the -m path")
        if os.path.isdir(path):
            raise UserError(f"{path} is a directory; pass a .gguf model file")
        region = FileRegion(path, offset, length)
        if region.length == 0:
            raise UserError(f"{path} is empty; pass a .gguf model file")
        gguf = cls(region.buf, source=path, base_addr=region.addr)
        gguf._region = region
        return gguf

    def check_tensors(self, supported_types=None):
        """Every tensor's type is computable and its bytes lie inside the buffer."""
        supported = ggml_types.TYPES if supported_types is None else supported_types
        for t in self.tensors.values():
            if t.type not in supported:
                raise UserError(f"{self.source}: tensor {t.name!r} has type "
                                f"{ggml_types.type_name(t.type)}, which llamazip does not support "
                                f"(supported: {ggml_types.supported_names()}); "
                                "requantize the model to one of those")
            if t.offset + t.nbytes > len(self.buf):
                raise UserError(f"{self.source}: tensor {t.name!r} ends at byte "
                                f"{t.offset + t.nbytes} but the file has {len(self.buf)}; "
                                "the file is truncated, download it again")

    def tensor_bytes(self, name):
        t = self.tensors[name]
        return self.buf[t.offset:t.offset + t.nbytes]

    def tensor_addr(self, name):
        if self.base_addr is None:
            raise ValueError("this GGUF buffer has no address (not a file map)")
        return self.base_addr + self.tensors[name].offset

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    @property
    def architecture(self):
        return self.metadata.get("general.architecture")

    def arch_key(self, suffix, default=None):
        """`{arch}.{suffix}`, the per-architecture hyperparameter keys."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)
