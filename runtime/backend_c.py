"""C backend: the interface of runtime/backend.py over our C kernels.

No numpy on this path: activations live in ctypes float buffers, weights are read
in place from the map by address, and every op is one call into the kernel library
(runtime/kernels.py picks and loads it). Calls are plain C, so ctypes releases the
GIL while they run; the library has its own thread pool.

Numerics are the ones runtime/backend.py sets out, as the NumPy oracle computes
them: activations quantized per weight type before the dot products, an f16 KV
cache, online softmax with an f16 value accumulator.
"""

import ctypes
import mmap

from runtime import ggml_types as T
from runtime import kernels
from runtime.backend import Backend

_F32 = ctypes.c_float
_SIZEOF_F32 = 4


class _BufferPool:
    """Float buffers of activations, recycled by size.

    A forward pass makes a few hundred activation matrices, mostly of the same
    handful of sizes; fresh ones cost a zero fill and, past malloc's mmap threshold,
    a page fault per 4 KiB (about 15% of a 128-token prompt on SmolLM2). A buffer
    comes back here when its Tensor dies: views hold their parent Tensor, so by then
    nothing can still read it. Contents are stale, not zero.
    """

    MAX_PER_SIZE = 8
    MAX_BYTES = 64 << 20   # beyond it, buffers are freed as before

    def __init__(self):
        self.free = {}    # n floats -> [ctypes arrays]
        self.bytes = 0

    def take(self, n):
        spare = self.free.get(n)
        if spare:
            try:
                buf = spare.pop()
            except IndexError:   # another thread took the last one
                pass
            else:
                self.bytes -= n * _SIZEOF_F32
                return buf
        return (_F32 * n)()

    def give(self, buf, n):
        spare = self.free.setdefault(n, [])
        if len(spare) < self.MAX_PER_SIZE and self.bytes + n * _SIZEOF_F32 <= self.MAX_BYTES:
            spare.append(buf)
            self.bytes += n * _SIZEOF_F32


_pool = _BufferPool()


class Tensor:
    """A float32 matrix [rows, cols], rows contiguous, at address `addr`.

    `owner` keeps the memory alive (a ctypes array, or the tensor this one views).
    Without an address, the memory comes from the buffer pool, uninitialised.
    """

    __slots__ = ("rows", "cols", "addr", "owner", "pooled")

    def __init__(self, rows, cols, addr=None, owner=None):
        self.rows = rows
        self.cols = cols
        pooled = addr is None
        if pooled:
            owner = _pool.take(max(1, rows * cols))
            addr = ctypes.addressof(owner)
        self.addr = addr
        self.owner = owner
        # last: __del__ gives the buffer back only once every field it reads is set
        # (a Ctrl-C can land anywhere in here)
        self.pooled = pooled

    def __del__(self):
        # getattr: a Ctrl-C inside __init__ leaves an instance with no fields yet
        if getattr(self, "pooled", False):
            _pool.give(self.owner, max(1, self.rows * self.cols))

    @property
    def shape(self):
        return (self.rows, self.cols)

    @property
    def size(self):
        return self.rows * self.cols

    def __len__(self):
        return self.rows

    @property
    def __array_interface__(self):
        # lets tests and tools view it with numpy.asarray, zero copy
        return {"shape": (self.rows, self.cols), "typestr": "<f4", "version": 3,
                "data": (self.addr, False)}

    def row(self, i):
        return list((_F32 * self.cols).from_address(self.addr + i * self.cols * _SIZEOF_F32))

    def __repr__(self):
        return f"Tensor({self.rows}x{self.cols})"


class _Logits:
    """One row of logits in place: indexable like a list, top(k) chosen in C."""

    __slots__ = ("lib", "owner", "addr", "n", "values")

    def __init__(self, lib, x, row):
        self.lib = lib
        self.owner = x  # keeps the memory alive
        self.addr = x.addr + row * x.cols * _SIZEOF_F32
        self.n = x.cols
        self.values = (_F32 * x.cols).from_address(self.addr)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.values[i]

    def __iter__(self):
        # a generator, so the rows' memory (held by self) outlives the iteration
        yield from self.values

    def top(self, k):
        k = max(0, min(k, self.n))
        idx = (ctypes.c_int64 * max(1, k))()
        val = (_F32 * max(1, k))()
        got = self.lib.lz_topk(self.addr, self.n, k, ctypes.addressof(idx), ctypes.addressof(val))
        return [(val[i], idx[i]) for i in range(got)]

    def logsumexp(self):
        """log(sum(exp(logits))), in double: log softmax(x)[i] is x[i] minus this."""
        return self.values[0] - self.lib.lz_logprob(self.addr, self.n, 0)


class Weight:
    """A GGUF tensor in place: ggml `shape` (shape[0] = row length), `type`, `addr`."""

    __slots__ = ("name", "shape", "type", "addr", "gguf", "_floats")

    def __init__(self, gguf, name):
        info = gguf.tensors[name]
        self.name = name
        self.shape = info.shape
        self.type = info.type
        self.addr = gguf.tensor_addr(name)
        self.gguf = gguf  # the map must outlive the handle
        self._floats = None

    @property
    def rows(self):
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    def floats(self, lib):
        """Address of the values as f32: in place for F32, else dequantized once."""
        if self.type == T.F32:
            return self.addr
        if self._floats is None:
            n = self.shape[0] * self.rows
            self._floats = (_F32 * n)()
            lib.lz_dequantize(self.type, self.addr, ctypes.addressof(self._floats), n)
        return ctypes.addressof(self._floats)


class KVCache:
    """f16 keys and values for all layers: [n_layers][n_ctx][kv_dim] each.

    Anonymous maps, so untouched positions cost no memory (pages are zero on demand).
    """

    def __init__(self, n_layers, n_ctx, kv_dim):
        self.n_layers = n_layers
        self.n_ctx = n_ctx
        self.kv_dim = kv_dim
        nbytes = max(1, n_layers * n_ctx * kv_dim * 2)
        self._k = mmap.mmap(-1, nbytes)
        self._v = mmap.mmap(-1, nbytes)
        self.k_addr = ctypes.addressof(ctypes.c_char.from_buffer(self._k))
        self.v_addr = ctypes.addressof(ctypes.c_char.from_buffer(self._v))

    def layer_addrs(self, layer):
        off = layer * self.n_ctx * self.kv_dim * 2
        return self.k_addr + off, self.v_addr + off


class CBackend(Backend):
    name = "c"

    def __init__(self, n_threads=1, variant=None):
        if variant is not None:
            self.kernels = kernels.load_variant(kernels.machine_arch(), variant)
        else:
            self.kernels = kernels.load()
        self.lib = self.kernels.lib
        self.n_threads = max(1, n_threads)
        self.lib.lz_set_threads(self.n_threads)
        self._rope_inv = {}     # id(RopeParams) -> (params, c_double array)
        self._rope_table = {}   # id(RopeParams) -> (params, positions, c_float array)

    def describe(self):
        k = self.kernels
        return f"C kernels {k.variant} ({k.arch}, {self.lib.lz_get_threads()} threads)"

    # ------------------------------------------------------------ weights, activations

    def weight(self, gguf, name):
        w = Weight(gguf, name)
        if w.type not in T.TYPES or not self.lib.lz_type_supported(w.type):
            raise ValueError(f"{name}: type {T.type_name(w.type)} has no C kernel")
        return w

    def tensor(self, rows, cols, values=None):
        """A new activation matrix (zeros, or the given flat sequence of floats)."""
        t = Tensor(rows, cols)
        if values is not None:
            t.owner[:] = values
        else:
            ctypes.memset(t.addr, 0, max(1, rows * cols) * _SIZEOF_F32)
        return t

    def embed(self, w, ids):
        n = w.shape[0]
        n_rows = w.rows
        for i in ids:
            if not 0 <= i < n_rows:
                raise ValueError(f"embed: token id {i} outside the {n_rows}-row {w.name}")
        out = Tensor(len(ids), n)
        ids_arr = (ctypes.c_int32 * len(ids))(*ids)
        self.lib.lz_embed(w.type, w.addr, n, ctypes.addressof(ids_arr), len(ids), out.addr)
        return out

    def take_rows(self, x, start, stop):
        return Tensor(stop - start, x.cols, x.addr + start * x.cols * _SIZEOF_F32, x)

    def take_cols(self, x, start, stop):
        if start == 0 and stop == x.cols:
            return x
        width = stop - start
        if x.rows == 1:   # one row: the columns are contiguous already (decoding)
            return Tensor(1, width, x.addr + start * _SIZEOF_F32, x)
        # several rows (a prompt): a copy, one memmove a row; small beside the matmul
        out = Tensor(x.rows, width)
        row_bytes, src_stride = width * _SIZEOF_F32, x.cols * _SIZEOF_F32
        src = x.addr + start * _SIZEOF_F32
        for r in range(x.rows):
            ctypes.memmove(out.addr + r * row_bytes, src + r * src_stride, row_bytes)
        return out

    def logprobs_rows(self, x, targets):
        lp = self.lib.lz_logprob
        stride = x.cols * _SIZEOF_F32
        return [lp(x.addr + i * stride, x.cols, int(t)) for i, t in enumerate(targets)]

    def to_floats(self, x):
        return [x.row(i) for i in range(x.rows)]

    def logits_row(self, x, row):
        return _Logits(self.lib, x, row)

    # ------------------------------------------------------------ ops

    def matmul(self, x, w):
        k = w.shape[0]
        if x.cols != k:
            raise ValueError(f"matmul: activations have {x.cols} columns, {w.name} rows have {k}")
        rows = w.rows
        y = Tensor(x.rows, rows)
        rc = self.lib.lz_matmul(w.type, w.addr, rows, k, x.addr, x.cols, x.rows, y.addr, rows)
        if rc != 0:
            raise RuntimeError(f"lz_matmul failed ({rc}) on {w.name}")
        return y

    def rmsnorm(self, x, w, eps):
        group = w.shape[0] if w is not None else x.cols
        if x.cols % group or (w is not None and w.rows != 1):
            raise ValueError(f"rmsnorm: {x.cols} columns do not split into {w.name} "
                             f"of shape {list(w.shape)}")
        y = Tensor(x.rows, x.cols)
        wp = w.floats(self.lib) if w is not None else None
        self.lib.lz_rmsnorm(x.addr, y.addr, x.size, wp, group, eps)
        return y

    def add(self, x, y):
        _same_size("add", x, y)
        self.lib.lz_add(x.addr, y.addr, x.size)
        return x

    def add_bias(self, x, b):
        if b.shape[0] * b.rows != x.cols:
            raise ValueError(f"add_bias: {b.name} has {b.shape[0] * b.rows} values "
                             f"for {x.cols} columns")
        self.lib.lz_add_bias(x.addr, x.rows, x.cols, b.floats(self.lib))
        return x

    def scale(self, x, s):
        self.lib.lz_scale(x.addr, x.size, s)
        return x

    def _rope_cs(self, rope, positions):
        """cos/sin table for these positions, shared by q and k of every layer."""
        key = id(rope)
        where = tuple(positions)
        hit = self._rope_table.get(key)
        if hit is not None and hit[0] is rope and hit[1] == where:
            return hit[2]
        inv = self._rope_inv.get(key)
        if inv is None or inv[0] is not rope:
            freqs = rope.inv_freq()
            inv = (rope, (ctypes.c_double * len(freqs))(*freqs))
            self._rope_inv[key] = inv
        half = rope.n_rot // 2
        n = len(where)
        cs = (_F32 * max(1, n * half * 2))()
        at = (ctypes.c_int64 * n)(*where)
        self.lib.lz_rope_table_at(cs, at, n, inv[1], half)
        if rope.attn_factor != 1.0:   # LongRoPE: cos and sin times the factor, in f32
            self.lib.lz_scale(cs, n * half * 2, rope.attn_factor)
        self._rope_table[key] = (rope, where, cs)
        return cs

    def rope(self, x, positions, n_heads, head_dim, rope):
        _check_heads("rope", x, n_heads, head_dim, rope.n_rot)
        if len(positions) != x.rows:
            raise ValueError(f"rope: {len(positions)} positions for {x.rows} rows")
        cs = self._rope_cs(rope, positions)
        self.lib.lz_rope(x.addr, x.rows, x.cols, n_heads, head_dim, rope.n_rot,
                         1 if rope.neox else 0, cs)
        return x

    def kv_cache(self, n_layers, n_ctx, kv_dim):
        return KVCache(n_layers, n_ctx, kv_dim)

    def attention(self, q, k, v, caches, layer, positions, n_heads, n_kv_heads, head_dim,
                  scale, window=0):
        n = q.rows
        for pos, cache in zip(positions, caches):
            if not 0 <= pos < cache.n_ctx or cache.kv_dim != caches[0].kv_dim \
                    or cache.n_ctx != caches[0].n_ctx:
                raise ValueError(f"attention: position {pos} or cache shape out of range")
        if len(positions) != n or len(caches) != n:
            raise ValueError("attention: one position and one cache per row")
        first = caches[0]
        _check_attention(q, k, v, first, layer, n_heads, n_kv_heads, head_dim)
        layer_off = layer * first.n_ctx * first.kv_dim     # in f16 elements
        k_bases = (ctypes.c_void_p * n)(*[c.k_addr for c in caches])
        v_bases = (ctypes.c_void_p * n)(*[c.v_addr for c in caches])
        at = (ctypes.c_int64 * n)(*positions)
        out = Tensor(n, n_heads * head_dim)
        rc = self.lib.lz_attention_rows(q.addr, q.cols, k.addr, v.addr, k.cols, k_bases,
                                        v_bases, layer_off, at, n, n_heads, n_kv_heads, head_dim, scale,
                                        window, out.addr, out.cols)
        if rc != 0:
            raise RuntimeError(f"lz_attention_rows failed ({rc})")
        return out

    def swiglu(self, g, u):
        _same_size("swiglu", g, u)
        y = Tensor(g.rows, g.cols)
        self.lib.lz_swiglu(g.addr, u.addr, y.addr, g.size)
        return y

    def geglu(self, g, u):
        _same_size("geglu", g, u)
        y = Tensor(g.rows, g.cols)
        self.lib.lz_geglu(g.addr, u.addr, y.addr, g.size)
        return y


# Shape checks before each call: the kernels take addresses and trust the sizes, so
# these are what keeps a wrong shape an exception rather than a stray write. One
# comparison or two per call, nothing per element.

def _same_size(op, x, y):
    if x.rows * x.cols != y.rows * y.cols:
        raise ValueError(f"{op}: {x.rows}x{x.cols} against {y.rows}x{y.cols}")


def _check_heads(op, x, n_heads, head_dim, n_rot):
    if n_heads < 1 or head_dim < 1 or x.cols < n_heads * head_dim or not 0 <= n_rot <= head_dim \
            or n_rot % 2:
        raise ValueError(f"{op}: {n_heads} heads of {head_dim} (rotating {n_rot}) do not fit "
                         f"{x.cols} columns")


def _check_attention(q, k, v, cache, layer, n_heads, n_kv_heads, head_dim):
    kv_dim = n_kv_heads * head_dim
    if n_kv_heads < 1 or n_heads % n_kv_heads or not 1 <= head_dim <= 1024 \
            or q.cols < n_heads * head_dim or k.cols < kv_dim or v.cols != k.cols \
            or k.rows != q.rows or v.rows != q.rows or cache.kv_dim != kv_dim \
            or not 0 <= layer < cache.n_layers:
        raise ValueError(f"attention: q {q.rows}x{q.cols}, k {k.rows}x{k.cols}, v {v.rows}x"
                         f"{v.cols}, {n_heads}/{n_kv_heads} heads of {head_dim}, cache of "
                         f"{cache.kv_dim} wide and {cache.n_layers} layers, layer {layer}")
