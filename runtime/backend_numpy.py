"""NumPy backend: the oracle every other backend is tested against.

It implements runtime/backend.py's interface with the numerics written there, as
plainly as NumPy allows (quantize_activations, the online softmax of attention).
"""

import math

import numpy as np

from runtime import ggml_types as T
from runtime.backend import Backend
from runtime.rope import RopeParams  # noqa: F401  (re-exported for the tests)


# ---------------------------------------------------------------- dequantization
# Each function takes the raw bytes of n_blocks blocks as a uint8 array of shape
# [n_blocks, type_size] and returns float32 [n_blocks, block_size].

def _f16(blocks, start):
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)


def _deq_q4_0(b):
    d = _f16(b, 0)
    qs = b[:, 2:18]
    q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32) - 8
    return d * q


def _deq_q4_1(b):
    d, m = _f16(b, 0), _f16(b, 2)
    qs = b[:, 4:20]
    q = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)
    return d * q + m


def _q5_values(qh_bytes, qs):
    qh = qh_bytes.copy().view("<u4")  # [n, 1]
    bits = (qh >> np.arange(32, dtype=np.uint32)) & 1
    low = np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.uint32)
    return (low | (bits << 4)).astype(np.float32)


def _deq_q5_0(b):
    d = _f16(b, 0)
    return d * (_q5_values(b[:, 2:6], b[:, 6:22]) - 16)


def _deq_q5_1(b):
    d, m = _f16(b, 0), _f16(b, 2)
    return d * _q5_values(b[:, 4:8], b[:, 8:24]) + m


def _legacy_dq(b, type_id):
    """d * q of Q4_1/Q5_1 blocks, without the minimum."""
    d = _f16(b, 0)
    if type_id == T.Q4_1:
        qs = b[:, 4:20]
        return d * np.concatenate([qs & 0xF, qs >> 4], axis=1).astype(np.float32)
    return d * _q5_values(b[:, 4:8], b[:, 8:24])


def _deq_q8_0(b):
    d = _f16(b, 0)
    return d * b[:, 2:34].view(np.int8).astype(np.float32)


def _deq_q2_k(b):
    scales = b[:, 0:16]
    qs = b[:, 16:80]
    d, dmin = _f16(b, 80), _f16(b, 82)
    out = np.empty((b.shape[0], 256), np.float32)
    sc = (scales & 0xF).astype(np.float32)
    mn = (scales >> 4).astype(np.float32)
    for half in range(2):              # two halves of 128 weights, 32 bytes of qs each
        q = qs[:, half * 32:(half + 1) * 32]
        for j in range(4):             # four 2-bit planes
            plane = ((q >> (2 * j)) & 3).astype(np.float32)
            for k in range(2):         # 16 weights per scale
                s = half * 8 + j * 2 + k
                dst = half * 128 + j * 32 + k * 16
                out[:, dst:dst + 16] = (d * sc[:, s:s + 1]) * plane[:, k * 16:(k + 1) * 16] \
                    - dmin * mn[:, s:s + 1]
    return out


def _k_scales_mins(s12):
    """The eight 6-bit scales and mins packed in 12 bytes (Q4_K, Q5_K)."""
    s = s12.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.float32)
    mn = np.empty((s.shape[0], 8), np.float32)
    for j in range(8):
        if j < 4:
            sc[:, j] = s[:, j] & 63
            mn[:, j] = s[:, j + 4] & 63
        else:
            sc[:, j] = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            mn[:, j] = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
    return sc, mn


def _deq_q4_k(b):
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_mins(b[:, 4:16])
    qs = b[:, 16:144]
    out = np.empty((b.shape[0], 256), np.float32)
    for c in range(4):                 # 64 weights per chunk: 32 low nibbles, 32 high
        q = qs[:, c * 32:(c + 1) * 32]
        for h, vals in enumerate((q & 0xF, q >> 4)):
            s = 2 * c + h
            out[:, c * 64 + h * 32:c * 64 + h * 32 + 32] = \
                d * sc[:, s:s + 1] * vals.astype(np.float32) - dmin * mn[:, s:s + 1]
    return out


def _deq_q5_k(b):
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _k_scales_mins(b[:, 4:16])
    qh = b[:, 16:48]
    qs = b[:, 48:176]
    out = np.empty((b.shape[0], 256), np.float32)
    for c in range(4):
        q = qs[:, c * 32:(c + 1) * 32]
        for h, vals in enumerate((q & 0xF, q >> 4)):
            s = 2 * c + h
            hi = ((qh >> s) & 1).astype(np.float32) * 16
            out[:, c * 64 + h * 32:c * 64 + h * 32 + 32] = \
                d * sc[:, s:s + 1] * (vals.astype(np.float32) + hi) - dmin * mn[:, s:s + 1]
    return out


def _deq_q3_k(b):
    hmask = b[:, 0:32]
    qs = b[:, 32:96]
    s = b[:, 96:108].astype(np.int32)
    d = _f16(b, 108)
    # 16 6-bit scales: low 4 bits in bytes 0..7 (two nibbles each), high 2 bits in 8..11
    scales = np.empty((b.shape[0], 16), np.float32)
    for i in range(16):
        low = (s[:, i] & 0xF) if i < 8 else (s[:, i - 8] >> 4)
        high = (s[:, 8 + i % 4] >> (2 * (i // 4))) & 3
        scales[:, i] = (low | (high << 4)) - 32
    out = np.empty((b.shape[0], 256), np.float32)
    for half in range(2):
        q = qs[:, half * 32:(half + 1) * 32]
        for j in range(4):
            bit = half * 4 + j
            plane = ((q >> (2 * j)) & 3).astype(np.float32)
            plane -= np.where((hmask >> bit) & 1, 0, 4).astype(np.float32)
            for k in range(2):
                si = half * 8 + j * 2 + k
                dst = half * 128 + j * 32 + k * 16
                out[:, dst:dst + 16] = d * scales[:, si:si + 1] * plane[:, k * 16:(k + 1) * 16]
    return out


def _deq_q6_k(b):
    ql = b[:, 0:128]
    qh = b[:, 128:192]
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b, 208)
    out = np.empty((b.shape[0], 256), np.float32)
    for half in range(2):
        l = ql[:, half * 64:(half + 1) * 64]
        h = qh[:, half * 32:(half + 1) * 32]
        quarters = (
            (l[:, :32] & 0xF) | (((h >> 0) & 3) << 4),
            (l[:, 32:] & 0xF) | (((h >> 2) & 3) << 4),
            (l[:, :32] >> 4) | (((h >> 4) & 3) << 4),
            (l[:, 32:] >> 4) | (((h >> 6) & 3) << 4),
        )
        for qi, q in enumerate(quarters):
            vals = q.astype(np.float32) - 32
            for k in range(2):
                si = half * 8 + qi * 2 + k
                dst = half * 128 + qi * 32 + k * 16
                out[:, dst:dst + 16] = d * sc[:, si:si + 1] * vals[:, k * 16:(k + 1) * 16]
    return out


_DEQUANT = {
    T.Q4_0: _deq_q4_0, T.Q4_1: _deq_q4_1, T.Q5_0: _deq_q5_0, T.Q5_1: _deq_q5_1,
    T.Q8_0: _deq_q8_0, T.Q2_K: _deq_q2_k, T.Q3_K: _deq_q3_k, T.Q4_K: _deq_q4_k,
    T.Q5_K: _deq_q5_k, T.Q6_K: _deq_q6_k,
}


def dequantize(raw, type_id, n_elements):
    """Float32 values of `n_elements` weights of `type_id` packed in `raw` bytes."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if type_id == T.F32:
        return data.view(np.float32)[:n_elements].copy()
    if type_id == T.F16:
        return data.view(np.float16)[:n_elements].astype(np.float32)
    if type_id == T.BF16:
        bits = data.view(np.uint16)[:n_elements].astype(np.uint32) << 16
        return bits.view(np.float32)
    _, block, size = T.TYPES[type_id]
    blocks = data[:n_elements // block * size].reshape(-1, size)
    return _DEQUANT[type_id](blocks).reshape(-1)


# ---------------------------------------------------------------- activations
# llama.cpp multiplies quantized weights with activations that it first quantizes to
# 8 bits per block: Q8_0 (f16 scale) for Q4_0/Q5_0/Q8_0, Q8_1 (f16 scale) for
# Q4_1/Q5_1 and Q8_K (f32 scale, 256 wide) for the K-quants; F16 weights see f16
# activations. Matching that keeps greedy output token for token with llama.cpp.

# attention: a row with SPLIT_KEYS keys or more splits them into chunks of CHUNK_KEYS
# (kernels/ops.c has the same)
SPLIT_KEYS = 512
CHUNK_KEYS = 256

_ACT_Q8_32 = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)
_ACT_Q8_K = (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)


def _round_half_even(x):
    return np.rint(x)


def _q8_blocks(x):
    """Blocks of 32 as llama.cpp's SIMD quantizers make them (x86 and NEON): id =
    127 / amax in f32, rounding half to even; returns (codes, unrounded d) per block."""
    blocks = np.asarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    d = (amax / np.float32(127.0)).astype(np.float32)
    inv = np.divide(np.float32(127.0), amax, out=np.zeros_like(amax), where=amax > 0)
    q = np.clip(_round_half_even((blocks * inv).astype(np.float32)), -127, 127)
    return q.astype(np.float32), d


def q8_1_sums(x):
    """s of each Q8_1 block: f16(d * sum(q)) with the unrounded d, as block_q8_1
    stores it. The Q4_1/Q5_1 minimum m of a weight block meets this, not sum(x)."""
    q, d = _q8_blocks(x)
    s = (d * q.sum(axis=1, keepdims=True)).astype(np.float32)
    return s.astype(np.float16).astype(np.float32).reshape(np.asarray(x).shape[0], -1)


def quantize_activations(x, weight_type):
    """The activations `x` [rows, k] as the weight type's dot product sees them."""
    if weight_type in _ACT_Q8_32:
        q, d = _q8_blocks(x)
        d16 = d.astype(np.float16).astype(np.float32)
        return (q * d16).astype(np.float32).reshape(x.shape)
    if weight_type in _ACT_Q8_K:
        blocks = x.reshape(-1, 256)
        idx = np.abs(blocks).argmax(axis=1)
        signed_max = blocks[np.arange(blocks.shape[0]), idx][:, None].astype(np.float32)
        iscale = np.divide(np.float32(-127.0), signed_max, out=np.zeros_like(signed_max),
                           where=signed_max != 0).astype(np.float32)
        q = np.minimum(127, _round_half_even(blocks * iscale))
        d = np.divide(np.float32(1.0), iscale, out=np.zeros_like(iscale), where=iscale != 0)
        return (q * d).astype(np.float32).reshape(x.shape)
    if weight_type == T.F16:
        return x.astype(np.float16).astype(np.float32)
    if weight_type == T.BF16:
        bits = x.astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        return rounded.view(np.float32)
    return x


# ---------------------------------------------------------------- backend

class Weight:
    def __init__(self, name, shape, type_id, raw):
        self.name = name
        self.shape = shape
        self.type = type_id
        self.raw = raw
        self._values = None

    def min_split(self):
        """Q4_1/Q5_1: (d * q as float32 [rows, k], m per block [rows, k / 32]), cached."""
        if getattr(self, "_split", None) is None:
            _, block, size = T.TYPES[self.type]
            blocks = np.frombuffer(self.raw, dtype=np.uint8)[:self.shape[0] * self.shape[1] //
                                                            block * size].reshape(-1, size)
            m = _f16(blocks, 2)
            dq = _legacy_dq(blocks, self.type)
            self._split = (dq.reshape(-1, self.shape[0]), m.reshape(self.shape[1], -1))
        return self._split

    def values(self):
        """Dequantized float32, [shape[1], shape[0]] (cached: the oracle trades memory for speed)."""
        if self._values is None:
            n = 1
            for dim in self.shape:
                n *= dim
            flat = dequantize(self.raw, self.type, n)
            self._values = flat.reshape(-1, self.shape[0]) if len(self.shape) > 1 else flat
        return self._values


class KVCache:
    """Keys and values in f16, as llama.cpp keeps them by default."""

    def __init__(self, n_layers, n_ctx, kv_dim):
        self.n_ctx = n_ctx
        self.k = np.zeros((n_layers, n_ctx, kv_dim), np.float16)
        self.v = np.zeros((n_layers, n_ctx, kv_dim), np.float16)


class _NumpyLogits:
    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        return float(self.values[i])

    def __iter__(self):
        return iter(self.values.tolist())

    def top(self, k):
        k = max(0, min(k, len(self.values)))
        # stable sort of -value: ties keep the lower id first
        ids = np.argsort(-self.values, kind="stable")[:k]
        return [(float(self.values[i]), int(i)) for i in ids]

    def logsumexp(self):
        """log(sum(exp(logits))), in double: log softmax(x)[i] is x[i] minus this."""
        x = self.values.astype(np.float64)
        top = x.max()
        return float(top + np.log(np.exp(x - top).sum()))


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, n_threads=1):
        self.n_threads = n_threads

    def describe(self):
        return f"numpy {np.__version__} (oracle)"

    def weight(self, gguf, name):
        info = gguf.tensors[name]
        return Weight(name, info.shape, info.type, gguf.tensor_bytes(name))

    def embed(self, w, ids):
        # Dequantize only the rows asked for: embeddings can be large.
        _, block, size = T.TYPES[w.type]
        row_bytes = w.shape[0] // block * size
        rows = [dequantize(w.raw[i * row_bytes:(i + 1) * row_bytes], w.type, w.shape[0])
                for i in ids]
        return np.stack(rows).astype(np.float32)

    def rmsnorm(self, x, w, eps):
        k = w.shape[0] if w is not None else x.shape[1]
        # as ggml: f32 squares summed in double, mean and scale in f32, x * scale * w
        chunks = x.reshape(-1, k).astype(np.float32)
        sums = (chunks * chunks).astype(np.float64).sum(axis=1, keepdims=True)
        mean = (sums / k).astype(np.float32)
        scale = (np.float32(1.0) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
        out = (chunks * scale).astype(np.float32)
        if w is not None:
            out *= w.values()
        return out.reshape(x.shape)

    def matmul(self, x, w):
        x = np.ascontiguousarray(x, dtype=np.float32)
        xq = quantize_activations(x, w.type)
        if w.type in (T.Q4_1, T.Q5_1):
            dq, m = w.min_split()
            return (xq @ dq.T + q8_1_sums(x) @ m.T).astype(np.float32)
        return (xq @ w.values().T).astype(np.float32)

    def add(self, x, y):
        x += y
        return x

    def add_bias(self, x, b):
        x += b.values()
        return x

    def scale(self, x, s):
        x *= np.float32(s)
        return x

    def rope(self, x, positions, n_heads, head_dim, rope):
        n = x.shape[0]
        inv = np.array(rope.inv_freq(), np.float64)
        pos = np.asarray(positions, dtype=np.float64)[:, None]
        theta = pos * inv[None, :]                      # [n, n_rot/2]
        cos = np.cos(theta).astype(np.float32)[:, None, :]
        sin = np.sin(theta).astype(np.float32)[:, None, :]
        if rope.attn_factor != 1.0:
            cos = cos * np.float32(rope.attn_factor)
            sin = sin * np.float32(rope.attn_factor)
        heads = x.reshape(n, n_heads, head_dim)
        half = rope.n_rot // 2
        if rope.neox:
            a = heads[:, :, :half].copy()
            b = heads[:, :, half:rope.n_rot].copy()
            heads[:, :, :half] = a * cos - b * sin
            heads[:, :, half:rope.n_rot] = a * sin + b * cos
        else:
            a = heads[:, :, 0:rope.n_rot:2].copy()
            b = heads[:, :, 1:rope.n_rot:2].copy()
            heads[:, :, 0:rope.n_rot:2] = a * cos - b * sin
            heads[:, :, 1:rope.n_rot:2] = a * sin + b * cos
        return x

    def kv_cache(self, n_layers, n_ctx, kv_dim):
        return KVCache(n_layers, n_ctx, kv_dim)

    def attention(self, q, k, v, caches, layer, positions, n_heads, n_kv_heads, head_dim,
                  scale, window=0):
        """Flash attention as llama.cpp's CPU backend computes it over an f16 cache for
        one token (its vec path), for every row whatever the batch: queries rounded
        to f16, an online softmax visiting keys in order with an f16 value
        accumulator; rows with SPLIT_KEYS keys or more split them into chunks of
        CHUNK_KEYS, combined in f32.
        """
        runs, start = [], 0
        for r in range(1, len(positions) + 1):
            if r == len(positions) or caches[r] is not caches[start] \
                    or positions[r] != positions[r - 1] + 1:
                runs.append((start, r))
                start = r
        out = []
        for a, b in runs:
            cache, pos0 = caches[a], positions[a]
            end = pos0 + b - a
            cache.k[layer, pos0:end] = k[a:b]
            cache.v[layer, pos0:end] = v[a:b]
            keys = cache.k[layer, :end].astype(np.float32).reshape(end, n_kv_heads, head_dim)
            vals = cache.v[layer, :end].reshape(end, n_kv_heads, head_dim)
            group = n_heads // n_kv_heads
            kv_of_head = np.arange(n_heads) // group
            query_pos = np.arange(pos0, end)[:, None, None]
            key_pos = np.arange(end)[None, None, :]
            visible = key_pos <= query_pos
            if window > 0:
                visible &= query_pos - key_pos < window
            visible = np.broadcast_to(visible, (b - a, n_heads, end))
            queries = q[a:b].reshape(b - a, n_heads, head_dim).astype(np.float16)
            queries = queries.astype(np.float32)
            # scores[i, h, j]: query row i, head h, key position j
            scores = np.einsum("ihd,jhd->ihj", queries, keys[:, kv_of_head, :]) * np.float32(scale)
            with np.errstate(over="ignore", invalid="ignore"):
                o = self._vec(scores, visible, vals, kv_of_head)
            out.append(o.reshape(b - a, n_heads * head_dim).astype(np.float32))
        return out[0] if len(out) == 1 else np.concatenate(out, axis=0)

    def _vec(self, scores, visible, vals, kv_of_head):
        n, n_heads, end = scores.shape
        n_keys = visible[:, 0, :].sum(axis=1)                       # per row
        first = visible[:, 0, :].argmax(axis=1)
        chunks = np.where(n_keys >= SPLIT_KEYS, (n_keys + CHUNK_KEYS - 1) // CHUNK_KEYS, 1)
        key_chunk = np.where(chunks[:, None] > 1,
                             (np.arange(end)[None, :] - first[:, None]) // CHUNK_KEYS, 0)
        m = np.full((n, n_heads, 1), -np.inf, np.float32)
        s = np.zeros((n, n_heads, 1), np.float32)
        o = np.zeros((n, n_heads, vals.shape[2]), np.float32)
        for c in range(int(chunks.max())):
            live = visible & (key_chunk == c)[:, None, :]
            cm = np.full((n, n_heads, 1), -np.inf, np.float32)
            cs = np.zeros((n, n_heads, 1), np.float32)
            acc = np.zeros((n, n_heads, vals.shape[2]), np.float16)
            self._online_softmax(scores, live, vals, kv_of_head, acc, cm, cs)
            if chunks.max() == 1:
                m, s, o = cm, cs, acc.astype(np.float32)
                break
            # combine in f32 (a chunk some rows do not have leaves them alone)
            have = cs > 0
            new = np.maximum(m, cm)
            so = np.where(have, np.exp(m - new), np.float32(1.0)).astype(np.float32)
            sn = np.where(have, np.exp(cm - new), np.float32(0.0)).astype(np.float32)
            o = np.where(have, o * so + acc.astype(np.float32) * sn, o).astype(np.float32)
            s = np.where(have, s * so + cs * sn, s).astype(np.float32)
            m = np.where(have, new, m)
        inv = np.where(s == 0, np.float32(0.0), np.float32(1.0) / s).astype(np.float32)
        return o * inv

    @staticmethod
    def _online_softmax(scores, visible, vals, kv_of_head, acc, running_max, running_sum):
        """Visit keys in order, as ggml's flash attention does (updates its arguments)."""
        for j in np.flatnonzero(visible.any(axis=(0, 1))):
            s_j = scores[:, :, j:j + 1]
            live = visible[:, :, j:j + 1]
            new_max = np.where(live, np.maximum(running_max, s_j), running_max)
            shrink = np.where(live & (s_j > running_max),
                              np.exp(running_max - new_max), np.float32(1.0)).astype(np.float32)
            weight = np.where(live & ~(s_j > running_max), np.exp(s_j - new_max),
                              np.where(live, np.float32(1.0), np.float32(0.0))).astype(np.float32)
            v_j = vals[j][kv_of_head][None, :, :].astype(np.float32)
            # ggml scales the f16 accumulator, then adds v * weight: two f16 roundings
            scaled = (acc.astype(np.float32) * shrink).astype(np.float16)
            added = (scaled.astype(np.float32) + v_j * weight).astype(np.float16)
            acc[:] = np.where(live, added, acc)
            running_sum[:] = np.where(live, running_sum * shrink + weight, running_sum)
            running_max[:] = new_max

    def swiglu(self, g, u):
        with np.errstate(over="ignore"):
            return (g / (1.0 + np.exp(-g)) * u).astype(np.float32)

    def geglu(self, g, u):
        c = math.sqrt(2.0 / math.pi)
        gelu = 0.5 * g * (1.0 + np.tanh(c * (g + 0.044715 * g * g * g)))
        return (gelu * u).astype(np.float32)

    def take_rows(self, x, start, stop):
        return x[start:stop]

    def take_cols(self, x, start, stop):
        # contiguous, because rope and attention reshape their input in place
        return np.ascontiguousarray(x[:, start:stop])

    def to_floats(self, x):
        return [row.tolist() for row in x]

    def logprobs_rows(self, x, targets):
        rows = x.astype(np.float64)
        top = rows.max(axis=1, keepdims=True)
        lse = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
        picked = rows[np.arange(len(targets)), np.asarray(targets)]
        return (picked - lse).tolist()

    def logits_row(self, x, row):
        return _NumpyLogits(x[row])
