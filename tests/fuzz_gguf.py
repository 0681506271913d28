"""GGUF fuzzing: damaged headers of real and synthetic models, each run through the
command line (C backend) in a child process, classified by how it ended.

Two kinds of damage to a base file's header:
  structured  the header parsed into keys, values and tensor entries, one of them
              changed (a value of the wrong type or out of range, a key renamed,
              dropped or doubled, arrays shortened or nested thousands deep, a tensor's
              shape, type or offset changed, the counts or the version changed), then
              written back;
  flips       1 to 8 random bytes of the original header changed.

Every result must be a clean exit 2 with one line on stderr, or a run that exits 0;
a signal, a traceback (any other exit) or a hang is a finding.

The weights of a 100 MB model are not copied per case: each case file holds the
header, a padding key that brings it to a fixed length, and then the base file's
data section, so a case rewrites only the header in place (`CaseFile`).

Children are forked from a server process that has imported the runtime but not
loaded the kernels (whose thread pool would not survive a fork), so a case costs a
fork, not a Python start.

    python -m tests.fuzz_gguf --count 10000 [--asan LIB.so] [--jobs 2]

prints the counts; bench/fuzz_gguf.py is the same for the benchmark folder.
"""

import argparse
import json
import os
import random
import re
import subprocess
import select
import signal
import struct
import sys
import tempfile
import time

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, \
    FLOAT64 = range(13)
_FMT = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
        FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
PAD_KEY = b"zz.fuzz.pad"
RUN_ARGS = ["-p", "Hi", "-n", "2", "--temp", "0", "-c", "32", "--backend", "c", "-t", "1"]


# ---------------------------------------------------------------- header model

class Header:
    """A GGUF header as editable parts: version, kv [[key bytes, type, value]],
    tensors [[name bytes, dims, type, rel]]; arrays are (element type, [values])."""

    def __init__(self, data):
        self.pos = 0
        self.data = data
        assert data[:4] == b"GGUF"
        self.pos = 4
        self.version = self._u(UINT32)
        n_tensors, n_kv = self._u(UINT64), self._u(UINT64)
        self.kv = []
        for _ in range(n_kv):
            key = self._str()
            vtype = self._u(UINT32)
            self.kv.append([key, vtype, self._value(vtype)])
        self.tensors = []
        for _ in range(n_tensors):
            name = self._str()
            n_dims = self._u(UINT32)
            dims = [self._u(UINT64) for _ in range(n_dims)]
            self.tensors.append([name, dims, self._u(UINT32), self._u(UINT64)])
        self.end = self.pos
        align = self.get(b"general.alignment", 32)
        self.data_offset = self.end + (-self.end) % align
        del self.data

    def _u(self, t):
        st = struct.Struct(_FMT[t])
        (v,) = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return v

    def _str(self):
        n = self._u(UINT64)
        s = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return s

    def _value(self, t):
        if t == STRING:
            return self._str()
        if t == ARRAY:
            et, n = self._u(UINT32), self._u(UINT64)
            return (et, [self._value(et) for _ in range(n)])
        return self._u(t)

    def get(self, key, default=None):
        for k, _, v in self.kv:
            if k == key:
                return v
        return default

    def index(self, key):
        for i, (k, _, _) in enumerate(self.kv):
            if k == key:
                return i
        return None

    def copy(self):
        h = Header.__new__(Header)
        h.version = self.version
        h.kv = [[k, t, _copy_value(v)] for k, t, v in self.kv]
        h.tensors = [[n, list(d), t, r] for n, d, t, r in self.tensors]
        h.end, h.data_offset = self.end, self.data_offset
        return h

    def serialize(self, n_kv=None, n_tensors=None):
        out = bytearray(b"GGUF")
        out += struct.pack("<IQQ", self.version,
                           len(self.tensors) if n_tensors is None else n_tensors,
                           len(self.kv) if n_kv is None else n_kv)
        for key, t, v in self.kv:
            self.last_kv_at = len(out)
            out += _pack_str(key) + struct.pack("<I", t) + _pack_value(t, v)
        for name, dims, t, rel in self.tensors:
            out += _pack_str(name) + struct.pack("<I", len(dims))
            out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in dims)
            out += struct.pack("<IQ", t & 0xFFFFFFFF, rel & (2**64 - 1))
        return bytes(out)


def _copy_value(v):
    if isinstance(v, tuple):
        return (v[0], [_copy_value(x) for x in v[1]])
    return v


def _pack_str(s):
    return struct.pack("<Q", len(s)) + s


def _pack_value(t, v):
    if isinstance(v, Packed):
        return v.data
    if t == STRING:
        return _pack_str(v)
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(_pack_value(et, x) for x in items)
    return struct.pack(_FMT[t], v)


# ---------------------------------------------------------------- mutations

_EDGE_INTS = [0, 1, 2, 3, 7, 31, 33, 255, 1000, 65535, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
              10**9, 2**62, 2**63 - 1]
_EDGE_FLOATS = [0.0, -0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf")]
_KEYS = [b"general.alignment", b"general.architecture", b"general.name",
         b"tokenizer.ggml.bos_token_id", b"tokenizer.ggml.eos_token_id",
         b"tokenizer.ggml.unknown_token_id", b"tokenizer.ggml.padding_token_id",
         b"tokenizer.ggml.tokens", b"tokenizer.ggml.scores", b"tokenizer.ggml.token_type",
         b"tokenizer.ggml.merges", b"tokenizer.ggml.model", b"tokenizer.ggml.pre",
         b"tokenizer.ggml.add_bos_token", b"tokenizer.chat_template"]
_ARCH_SUFFIXES = [b"block_count", b"embedding_length", b"feed_forward_length",
                  b"attention.head_count", b"attention.head_count_kv", b"attention.key_length",
                  b"attention.value_length", b"attention.layer_norm_rms_epsilon",
                  b"context_length", b"vocab_size", b"rope.dimension_count", b"rope.freq_base",
                  b"rope.scaling.factor", b"rope.scaling.type", b"attention.sliding_window",
                  b"rope.scaling.original_context_length", b"rope.scaling.attn_factor"]


class Packed:
    """An array value given as its encoded bytes (deep nestings, built without recursion)."""

    def __init__(self, data):
        self.data = data


def _nested(depth, leaf=1):
    """An array of arrays `depth` deep around one u32, encoded."""
    data = struct.pack("<IQI", UINT32, 1, leaf)
    for _ in range(depth - 1):
        data = struct.pack("<IQ", ARRAY, 1) + data
    return Packed(data)


def _random_value(rng):
    """(type, value) of any kind, mostly edge values."""
    kind = rng.randrange(9)
    if kind == 0:
        return INT32, rng.choice([0, -1, 1, -2**31, 2**31 - 1])
    if kind == 1:
        return rng.choice([UINT32, UINT64]), rng.choice(_EDGE_INTS)
    if kind == 2:
        return rng.choice([FLOAT32, FLOAT64]), rng.choice(_EDGE_FLOATS)
    if kind == 3:
        return STRING, rng.choice([b"", b"x", b"\xff\xfe", b"llama", b"a" * 1000])
    if kind == 4:
        return BOOL, rng.random() < 0.5
    if kind == 5:
        return ARRAY, (UINT32, [rng.choice(_EDGE_INTS[:12]) for _ in range(rng.randrange(4))])
    if kind == 6:
        return ARRAY, _nested(rng.choice([2, 3, 5, 100, 5000]))
    if kind == 7:
        return ARRAY, (STRING, [b"a", b"b"])
    return rng.choice([INT8, INT16, UINT8, UINT16]), 0


def _fit(t, v):
    """v made representable in type t (integers wrap like a C cast)."""
    if t in (UINT8, UINT16, UINT32, UINT64):
        return v % (1 << (8 * struct.calcsize(_FMT[t])))
    if t in (INT8, INT16, INT32, INT64):
        bits = 8 * struct.calcsize(_FMT[t])
        return (v + (1 << (bits - 1))) % (1 << bits) - (1 << (bits - 1))
    return v


def _arch_key(h, rng):
    arch = h.get(b"general.architecture", b"llama")
    return arch + b"." + rng.choice(_ARCH_SUFFIXES)


def mutate(base, rng):
    """(description, header bytes, n_kv/n_tensors overrides) of one structured mutation."""
    h = base.copy()
    counts = {}
    op = rng.randrange(16)
    if op <= 3:   # a known key gets a value of another type or out of range
        key = rng.choice(_KEYS) if op < 2 else _arch_key(h, rng)
        t, v = _random_value(rng)
        if rng.random() < 0.5:   # right type, edge value
            i = h.index(key)
            if i is not None and h.kv[i][1] in (UINT32, INT32, UINT64, UINT8, UINT16):
                t, v = h.kv[i][1], rng.choice(_EDGE_INTS)
                v = v % (2 ** (8 * struct.calcsize(_FMT[t]) - (t == INT32)))
            elif i is not None and h.kv[i][1] in (FLOAT32, FLOAT64):
                t, v = h.kv[i][1], rng.choice(_EDGE_FLOATS)
        v = _fit(t, v)
        i = h.index(key)
        if i is None:
            h.kv.insert(rng.randrange(len(h.kv) + 1), [key, t, v])
        else:
            h.kv[i][1:] = [t, v]
        desc = f"set {key.decode()}"
    elif op == 4:   # drop a key
        i = rng.randrange(len(h.kv))
        desc = f"drop {h.kv[i][0].decode('latin-1')}"
        del h.kv[i]
    elif op == 5:   # rename a key by one character
        i = rng.randrange(len(h.kv))
        key = bytearray(h.kv[i][0])
        j = rng.randrange(len(key))
        key[j] = rng.choice(b"abcxyz._")
        desc = f"rename {h.kv[i][0].decode('latin-1')}"
        h.kv[i][0] = bytes(key)
    elif op == 6:   # duplicate a key
        i = rng.randrange(len(h.kv))
        h.kv.insert(rng.randrange(len(h.kv) + 1), list(h.kv[i]))
        desc = f"duplicate {h.kv[i][0].decode('latin-1')}"
    elif op == 7:   # shorten or lengthen a vocabulary array
        key = rng.choice([b"tokenizer.ggml.tokens", b"tokenizer.ggml.scores",
                          b"tokenizer.ggml.token_type", b"tokenizer.ggml.merges"])
        i = h.index(key)
        if i is None:
            return mutate(base, rng)
        et, items = h.kv[i][2]
        cut = rng.choice([0, 1, len(items) // 2, len(items) - 1])
        h.kv[i][2] = (et, items[:cut] if rng.random() < 0.7 else items + items[:cut])
        desc = f"resize {key.decode()} to {len(h.kv[i][2][1])}"
    elif op == 8:   # array element type changed
        i = rng.choice([j for j, kv in enumerate(h.kv) if kv[1] == ARRAY] or [0])
        if h.kv[i][1] != ARRAY:
            return mutate(base, rng)
        et, items = h.kv[i][2]
        new = rng.choice([UINT8, INT32, FLOAT32, STRING, BOOL])
        item = {UINT8: 1, INT32: -1, FLOAT32: 0.5, STRING: b"x", BOOL: True}[new]
        h.kv[i][2] = (new, [item] * min(len(items), rng.choice([1, 50, len(items)])))
        desc = f"retype array {h.kv[i][0].decode('latin-1')}"
    elif op <= 11:   # a tensor's shape
        t = rng.choice(h.tensors)
        d = t[1]
        choice = rng.randrange(7)
        if choice == 0:
            d[rng.randrange(len(d))] = rng.choice([0, 1, 2**32, 2**63, 2**64 - 1])
        elif choice == 1:
            d[rng.randrange(len(d))] *= rng.choice([2, 32, 256])
        elif choice == 2:
            j = rng.randrange(len(d))
            d[j] = max(1, d[j] // rng.choice([2, 32]))
        elif choice == 3:
            d.reverse()
        elif choice == 4:
            d.append(rng.choice([1, 2, 3]))
        elif choice == 5:
            t[1] = d[:1] if len(d) > 1 else d + [2]
        else:
            t[1] = d + [1, 1, 1, 1]
        desc = f"shape of {t[0].decode('latin-1')} -> {t[1]}"
    elif op == 12:   # a tensor's type
        t = rng.choice(h.tensors)
        t[2] = rng.choice([0, 1, 2, 3, 6, 7, 8, 10, 12, 14, 16, 30, 39, 99, 2**31])
        desc = f"type of {t[0].decode('latin-1')} -> {t[2]}"
    elif op == 13:   # a tensor's offset
        t = rng.choice(h.tensors)
        t[3] = rng.choice([0, t[3] + 1, t[3] + 32, t[3] * 2, 2**40, 2**63, 2**64 - 32])
        desc = f"offset of {t[0].decode('latin-1')} -> {t[3]}"
    elif op == 14:   # tensors dropped, renamed or doubled
        i = rng.randrange(len(h.tensors))
        what = rng.randrange(3)
        if what == 0:
            desc = f"drop tensor {h.tensors[i][0].decode('latin-1')}"
            del h.tensors[i]
        elif what == 1:
            desc = f"rename tensor {h.tensors[i][0].decode('latin-1')}"
            h.tensors[i][0] = h.tensors[i][0][:-1] + b"X"
        else:
            desc = f"double tensor {h.tensors[i][0].decode('latin-1')}"
            h.tensors.append(list(h.tensors[i]))
    else:   # counts or version
        which = rng.randrange(3)
        if which == 0:
            counts["n_kv"] = rng.choice([0, len(h.kv) - 1, len(h.kv) + 1, 2**40, 2**64 - 1])
            desc = f"n_kv -> {counts['n_kv']}"
        elif which == 1:
            counts["n_tensors"] = rng.choice([0, len(h.tensors) - 1, len(h.tensors) + 1,
                                              2**64 - 1])
            desc = f"n_tensors -> {counts['n_tensors']}"
        else:
            h.version = rng.choice([0, 1, 2, 4, 2**32 - 1])
            desc = f"version -> {h.version}"
    return desc, h, counts


def flips(header_bytes, rng):
    """(description, bytes) with 1 to 8 random bytes of the header changed."""
    data = bytearray(header_bytes)
    n = rng.randint(1, 8)
    where = []
    for _ in range(n):
        i = rng.randrange(len(data))
        data[i] = rng.choice([data[i] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)])
        where.append(i)
    return f"flip bytes {sorted(where)}", bytes(data)


# ---------------------------------------------------------------- case files

class CaseFile:
    """A file of FIXED header bytes then the base's data section, rewritten in place.

    The header is padded (a string under PAD_KEY, the last key) to `fixed` bytes, a
    multiple of the alignment, so the data section never moves.
    """

    def __init__(self, base_path, folder, name):
        with open(base_path, "rb") as f:
            head = f.read(64 << 20)
        self.base = Header(memoryview(head))
        self.base_bytes = head[:self.base.end]
        self.align = self.base.get(b"general.alignment", 32)
        self.fixed = _round_up(self.base.end + (1 << 20), 1 << 16)
        self.path = os.path.join(folder, name)
        size = os.path.getsize(base_path) - self.base.data_offset
        with open(base_path, "rb") as src, open(self.path, "wb") as dst:
            dst.truncate(self.fixed)
            dst.seek(self.fixed)
            src.seek(self.base.data_offset)
            while True:
                chunk = src.read(8 << 20)
                if not chunk:
                    break
                dst.write(chunk)
        self.size = self.fixed + size
        self.fd = os.open(self.path, os.O_RDWR)

    def padded(self, h, counts=None):
        """Header bytes with the pad key sized so that they fill `fixed` (or, when the
        mutation left no room, as they are)."""
        counts = counts or {}
        h = h.copy()
        h.kv.append([PAD_KEY, STRING, b""])
        n_kv = counts.get("n_kv")
        raw = h.serialize(n_kv=n_kv, n_tensors=counts.get("n_tensors"))
        room = self.fixed - len(raw)
        if room < 0:
            return raw
        h.kv[-1][2] = b"p" * room
        raw = h.serialize(n_kv=n_kv, n_tensors=counts.get("n_tensors"))
        start = h.last_kv_at + 8 + len(PAD_KEY) + 4 + 8
        self.pad_span = (start, start + room)   # the pad's own bytes
        return raw

    def write(self, header):
        """Put `header` (at most `fixed` bytes; zeros after it) in place."""
        header = header[:self.fixed]
        os.pwrite(self.fd, header + bytes(self.fixed - len(header)), 0)

    def original(self):
        return self.padded(self.base)


def write_case(base_path, out_path, edit):
    """A copy of `base_path` whose header went through `edit(header)` (which changes a
    Header in place), the data section following at the next aligned offset."""
    with open(base_path, "rb") as f:
        data = f.read()
    base = Header(memoryview(data))
    h = base.copy()
    edit(h)
    raw = h.serialize()
    align = base.get(b"general.alignment", 32)
    with open(out_path, "wb") as f:
        f.write(raw + bytes(-len(raw) % align) + data[base.data_offset:])
    return out_path


def set_key(h, key, vtype, value):
    """Set (or add) metadata `key` in header `h`."""
    i = h.index(key)
    if i is None:
        h.kv.append([key, vtype, value])
    else:
        h.kv[i][1:] = [vtype, value]


def _round_up(n, m):
    return (n + m - 1) // m * m


def cases(case_file, rng, count, flip_share=0.5):
    """`count` (description, header bytes) cases for `case_file`'s base."""
    original = case_file.original()
    lo, hi = case_file.pad_span
    for _ in range(count):
        if rng.random() < flip_share:
            # flips within the base's own header bytes, not the pad string we add
            desc, flipped = flips(original[:lo] + original[hi:], rng)
            yield desc, flipped[:lo] + original[lo:hi] + flipped[lo:]
        else:
            desc, h, counts = mutate(case_file.base, rng)
            yield desc, case_file.padded(h, counts)


# ---------------------------------------------------------------- running

def _child(path, out_path, err_path, asan_lib):
    """In the forked child: run the command line on `path`, never return."""
    try:
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(err, 2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if asan_lib:
            from runtime import kernels
            kernels.dev_library_path = lambda arch, variant: asan_lib
        from runtime.cli import main
        rc = main(["-m", path] + RUN_ARGS)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc if isinstance(rc, int) else 0)
    except SystemExit as e:
        os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(70)


def run_case(path, tmp, timeout, asan_lib=None):
    """(outcome, detail) of running the CLI on `path` in a forked child.

    outcome: "ok" (exit 0), "error" (exit 2, one line), "signal", "traceback" (any
    other exit, or exit 2 with more than one line), "hang".
    """
    out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    pid = os.fork()
    if pid == 0:
        _child(path, out_path, err_path, asan_lib)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", ""
        time.sleep(0.005)
    with open(err_path, "rb") as f:
        err = f.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        return "signal", f"signal {os.WTERMSIG(status)}: {err[-2000:]}"
    rc = os.WEXITSTATUS(status)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if rc == 0:
        return "ok", ""
    if rc == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "error", lines[0]
    return "traceback", f"exit {rc}: {err[-3000:]}"


def fuzz(base_paths, count, seed=0, timeout=60.0, asan_lib=None, progress=None, flip_share=0.5):
    """Run `count` cases spread over `base_paths`; returns (counts, findings, errors).

    counts: outcome -> number; findings: [(base, description, outcome, detail)] for
    signals, tracebacks and hangs; errors: a sample of the one-line messages.
    """
    rng = random.Random(seed)
    counts = {"ok": 0, "error": 0, "signal": 0, "traceback": 0, "hang": 0}
    findings, messages = [], {}
    with tempfile.TemporaryDirectory(prefix="llamazip-fuzz-") as tmp:
        files = [CaseFile(p, tmp, f"case{i}.gguf") for i, p in enumerate(base_paths)]
        per = [count // len(files) + (i < count % len(files)) for i in range(len(files))]
        done = 0
        for cf, n in zip(files, per):
            for desc, header in cases(cf, rng, n, flip_share):
                cf.write(header)
                outcome, detail = run_case(cf.path, tmp, timeout, asan_lib)
                counts[outcome] += 1
                if outcome in ("signal", "traceback", "hang"):
                    print(f"FINDING {outcome} [{os.path.basename(cf.path)}] {desc}: "
                          f"{detail.strip()[-1500:]}", file=sys.stderr, flush=True)
                    findings.append((os.path.basename(base_paths[files.index(cf)]), desc,
                                     outcome, detail))
                elif outcome == "error":
                    kind = re.sub(r"\d+", "N", detail.split(": ", 2)[-1])[:70]
                    messages[kind] = messages.get(kind, 0) + 1
                done += 1
                if progress:
                    progress(done, counts)
        for cf in files:
            os.close(cf.fd)
    return counts, findings, messages


def base_models(tmp):
    """SmolLM2 (a real header), and synthetic models with a trained SPM vocabulary of
    the architectures whose switches differ: llama, qwen2 (q/k/v biases), gemma3 (q/k
    norms, post norms, GELU, sliding window), phi3 (fused q|k|v and gate|up)."""
    from tests import synthetic
    from tests.models import smollm2
    from runtime import ggml_types as T
    spm = synthetic.train_spm(os.path.join(tmp, "spm"))
    models = [smollm2()]
    for arch, kind in (("llama", T.Q8_0), ("qwen2", T.Q4_0), ("gemma3", T.F16),
                       ("phi3", T.Q5_1)):
        path = os.path.join(tmp, f"{arch}.gguf")
        models.append(synthetic.write_model(path, spm, arch=arch, weight_type=kind,
                                            window=4 if arch == "gemma3" else 0))
    return models


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--asan", help="a sanitizer build of the kernels to load instead "
                   "(kernels/build.py --sanitize); run under LD_PRELOAD=libasan")
    p.add_argument("--model", action="append", help="base GGUF (default: SmolLM2 + synthetic)")
    p.add_argument("--jobs", type=int, default=1, help="processes running cases at once")
    p.add_argument("--json", help="write the counts, findings and messages here")
    args = p.parse_args(argv)
    if args.jobs > 1:
        return _parallel(args, argv)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="llamazip-fuzz-base-") as tmp:
        bases = args.model or base_models(tmp)

        def progress(done, counts):
            if done % 250 == 0:
                print(f"{done}/{args.count} {counts} {time.time() - start:.0f}s",
                      file=sys.stderr, flush=True)

        counts, findings, messages = fuzz(bases, args.count, args.seed, args.timeout,
                                          args.asan, progress)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"counts": counts, "findings": findings, "messages": messages}, f)
    return _report(args.count, len(bases), start, counts, findings, messages)


def _parallel(args, argv):
    """--jobs N: N processes with seeds seed, seed+1, ...; their figures summed."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="llamazip-fuzz-jobs-") as tmp:
        models = args.model or base_models(tmp)
        procs = []
        for j in range(args.jobs):
            n = args.count // args.jobs + (j < args.count % args.jobs)
            cmd = [sys.executable, "-m", "tests.fuzz_gguf", "--count", str(n), "--seed",
                   str(args.seed * 1000 + j), "--timeout", str(args.timeout),
                   "--json", os.path.join(tmp, f"{j}.json")]
            for m in models:
                cmd += ["--model", m]
            if args.asan:
                cmd += ["--asan", args.asan]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
        counts, findings, messages = {}, [], {}
        for j, proc in enumerate(procs):
            proc.wait()
            with open(os.path.join(tmp, f"{j}.json")) as f:
                part = json.load(f)
            for k, v in part["counts"].items():
                counts[k] = counts.get(k, 0) + v
            findings += part["findings"]
            for k, v in part["messages"].items():
                messages[k] = messages.get(k, 0) + v
    return _report(args.count, len(models), start, counts, findings, messages)


def _report(count, n_bases, start, counts, findings, messages):
    for base, desc, outcome, detail in findings:
        print(f"FINDING {outcome} [{base}] {desc}: {detail.strip()[-500:]}")
    print(f"cases: {count}  bases: {n_bases}  seconds: {time.time() - start:.0f}")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    top = sorted(messages.items(), key=lambda kv: -kv[1])[:15]
    for msg, n in top:
        print(f"  {n:6d}  ...{msg}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
