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

# Limits on what a header may declare, so that a damaged or hostile file costs a
# clear error instead of a deep recursion, a huge allocation or a wrapped size.
MAX_ARRAY_DEPTH = 2          # an array of arrays is as deep as real files go
MAX_DIMS = 4
MAX_DIM = 1 << 40            # elements along one dimension
MAX_ELEMENTS = 1 << 48       # elements in one tensor
MAX_ALIGNMENT = 1 << 24
# Smallest encoding of one element of each kind: what a count must leave room for.
_MIN_ITEM_BYTES = {STRING: 8, ARRAY: 12}


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

    def value(self, vtype, key, depth=0):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise UserError(f"{self.source}: metadata key {key!r} nests arrays deeper than "
                                f"{MAX_ARRAY_DEPTH}; the file is damaged")
            etype = self.scalar(_U32)
            count = self.scalar(_U64)
            return self.array(etype, count, key, depth + 1)
        raise UserError(f"{self.source}: metadata key {key!r} has unknown value type {vtype}; "
                        "the file is damaged or from a newer GGUF version")

    def array(self, etype, count, key, depth=1):
        item = _SCALAR[etype].size if etype in _SCALAR else _MIN_ITEM_BYTES.get(etype)
        if item is None:
            raise UserError(f"{self.source}: metadata key {key!r} is an array of unknown "
                            f"type {etype}; the file is damaged or from a newer GGUF version")
        if count * item > len(self.buf) - self.pos:
            raise UserError(f"{self.source}: metadata key {key!r} declares {count} values, "
                            "more than the rest of the file holds; the file is truncated or damaged")
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
        return [self.value(etype, key, depth) for _ in range(count)]


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
        # smallest entries: a key/value is 8 + 1 + 4 bytes, a tensor entry 8 + 4 + 4 + 8
        if n_kv * 13 > len(self.buf) or n_tensors * 24 > len(self.buf):
            raise UserError(f"{source}: the header declares {n_kv} metadata keys and "
                            f"{n_tensors} tensors, more than its {len(self.buf)} bytes hold; "
                            "the file is truncated or damaged, download it again")

        self.metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            vtype = cur.scalar(_U32)
            if key in self.metadata:
                raise UserError(f"{source}: metadata key {key!r} appears twice; "
                                "the file is damaged")
            self.metadata[key] = cur.value(vtype, key)

        self.alignment = self._alignment()
        raw_infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar(_U32)
            if not 1 <= n_dims <= MAX_DIMS:
                raise UserError(f"{source}: tensor {name!r} has {n_dims} dimensions "
                                f"(1 to {MAX_DIMS}); the file is damaged")
            shape = tuple(cur.scalar(_U64) for _ in range(n_dims))
            type_id = cur.scalar(_U32)
            rel = cur.scalar(_U64)
            raw_infos.append((name, shape, type_id, rel))

        pad = (-cur.pos) % self.alignment
        self.data_offset = cur.pos + pad
        self.tensors = {}
        for name, shape, type_id, rel in raw_infos:
            if name in self.tensors:
                raise UserError(f"{source}: tensor {name!r} appears twice; the file is damaged")
            self.tensors[name] = self._tensor_info(name, shape, type_id, rel)

    def _alignment(self):
        """general.alignment: a power of two (32 when absent), as an int."""
        value = self.metadata.get("general.alignment", 32)
        if type(value) is not int or value <= 0 or value > MAX_ALIGNMENT \
                or value & (value - 1):
            raise UserError(f"{self.source}: general.alignment {value!r} is not a power of "
                            f"two up to {MAX_ALIGNMENT}; the file is damaged")
        return value

    def _tensor_info(self, name, shape, type_id, rel):
        """TensorInfo after checking the shape and that the bytes lie inside the buffer.

        Python integers do not wrap, so the products and sums below are exact; the
        limits keep every figure that reaches the C kernels well inside int64.
        """
        source = self.source
        n = 1
        for d in shape:
            if not 1 <= d <= MAX_DIM:
                raise UserError(f"{source}: tensor {name!r} has shape {list(shape)}; every "
                                f"dimension must be 1 to {MAX_DIM}. The file is damaged")
            n *= d
        if n > MAX_ELEMENTS:
            raise UserError(f"{source}: tensor {name!r} has {n} elements, more than any "
                            "model holds; the file is damaged")
        if rel % self.alignment:
            raise UserError(f"{source}: tensor {name!r} starts at offset {rel}, not a multiple "
                            f"of the alignment {self.alignment}; the file is damaged")
        nbytes = None
        if type_id in ggml_types.TYPES:
            _, block, size = ggml_types.TYPES[type_id]
            if shape[0] % block:
                raise UserError(f"{source}: tensor {name!r} row of {shape[0]} is not a "
                                f"multiple of the {ggml_types.type_name(type_id)} block")
            nbytes = n // block * size
            end = self.data_offset + rel + nbytes
            if end > len(self.buf):
                raise UserError(f"{source}: tensor {name!r} ends at byte {end} but the file "
                                f"has {len(self.buf)}; the file is truncated or damaged, "
                                "download it again")
        return TensorInfo(name, shape, type_id, self.data_offset + rel, nbytes)

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
