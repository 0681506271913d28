"""The C kernels against the NumPy oracle (runtime/backend_numpy.py), on every variant.

Every variant runs through the same static test driver (kernels/test_driver.c, built by
`kernels/build.py --drivers`): natively for x86-64, under qemu-user for aarch64 and
riscv64 (several RVV vector lengths, and CPUs without the optional extensions to show
the fallback variant runs there). The native libraries are also checked through
ctypes and the C backend.

Tolerances:
- activation quantization and dequantization: exact (same formulas, same rounding);
- matmul: |y - ref| <= 1e-5 * sum|xq|*|w|. Inside a block the kernels sum integers
  exactly; what is left is float rounding of per-block products and of the sum over
  at most k/32 + 16 partial sums, each off by 2^-24 relative: (2048/32 + 16) * 6e-8
  ~ 5e-6 of the absolute sum for our sizes. A real bug is off by O(1) of it;
- elementwise ops: a few float32 ulps (our exp is within 2 ulps);
- attention: the value accumulator is f16 (2^-11 relative steps); a 1-ulp f32
  difference in a score can flip one f16 rounding, so 4e-3 of the largest |v|.
"""

import importlib.util
import math
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime import ggml_types as T  # noqa: E402
from runtime import kernels  # noqa: E402
from runtime.backend_numpy import (RopeParams, Weight, dequantize, q8_1_sums,  # noqa: E402
                                   quantize_activations, NumpyBackend)
from runtime.errors import UserError  # noqa: E402

_spec = importlib.util.spec_from_file_location("kernels_build", os.path.join(ROOT, "kernels", "build.py"))
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# f16 scale offsets in each block, for making random K-quant blocks (gguf-py cannot
# quantize K-quants, but dequantizes them: the oracle is checked against it below)
SCALE_OFFSETS = {"Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}

HOST = kernels.machine_arch()
QEMU_RVV = "rv64,v=true,vext_spec=v1.0,vlen={}"

# (id, arch, variant, qemu cpu or None); the driver runs natively when arch == HOST
RUNS = [
    ("x86_64-generic", "x86_64", "generic", None),
    ("x86_64-avx2", "x86_64", "avx2", None),
    ("x86_64-avx512", "x86_64", "avx512", None),
    ("aarch64-neon-a53", "aarch64", "neon", "cortex-a53"),
    ("aarch64-dotprod", "aarch64", "dotprod", "max"),
    ("aarch64-i8mm", "aarch64", "i8mm", "max"),
    ("riscv64-rv64gc", "riscv64", "rv64gc", "rv64"),
    ("riscv64-rvv128", "riscv64", "rvv", QEMU_RVV.format(128)),
    ("riscv64-rvv256", "riscv64", "rvv", QEMU_RVV.format(256)),
    ("riscv64-rvv512", "riscv64", "rvv", QEMU_RVV.format(512)),
]


def _have_zig():
    try:
        build.zig_version()
        return True
    except SystemExit:
        return False


def _qemu(arch):
    return shutil.which(f"qemu-{arch}")


def driver_command(arch, variant, cpu):
    """argv running the variant's test driver, or a pytest skip reason (str)."""
    path = build.output_path(arch, variant, driver=True)
    if arch == HOST:
        feats = kernels.detect_features(arch)
        if not kernels.REQUIRES[(arch, variant)] <= feats:
            return f"this CPU lacks {sorted(kernels.REQUIRES[(arch, variant)] - feats)}"
        return [path]
    q = _qemu(arch)
    if not q:
        return f"qemu-{arch} is not installed (apt-get install qemu-user)"
    return [q, "-cpu", cpu, path]


@pytest.fixture(scope="session")
def built():
    """Build every library and test driver once (cached by kernels/build.py)."""
    if not _have_zig():
        pytest.skip("zig's C compiler is missing (pip install ziglang)")
    for arch, variant, driver in build.all_jobs(drivers=True):
        build.build(arch, variant, driver=driver, quiet=True)
    return True


# ---------------------------------------------------------------- test data

def make_weights(name, rows, k, rng):
    """Weights of type `name`, [rows, k], as raw bytes (uint8 array [rows, row_bytes])."""
    import gguf.quants as gq
    from gguf import GGMLQuantizationType as Q
    tid = getattr(T, name)
    if name == "F32":
        return rng.standard_normal((rows, k), dtype=np.float32).view(np.uint8)
    if name in SCALE_OFFSETS:
        _, block, size = T.TYPES[tid]
        raw = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
        for off in SCALE_OFFSETS[name]:
            raw[:, :, off:off + 2] = (rng.random((rows, k // block, 1), dtype=np.float32) * 0.01
                                      + 0.001).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, -1)
    w = rng.standard_normal((rows, k), dtype=np.float32)
    return np.ascontiguousarray(gq.quantize(w, getattr(Q, name))).view(np.uint8)


class Script:
    """Commands for the test driver, with what each one should output."""

    def __init__(self):
        self.parts = []
        self.outputs = []  # (name, n_floats or ("u64"/"str"), reference, check)

    def cmd(self, *fields):
        for kind, value in fields:
            if kind == "raw":
                self.parts.append(bytes(value))
            else:
                self.parts.append(struct.pack("<" + kind, value))

    def expect(self, name, count, ref=None, check=None):
        self.outputs.append((name, count, ref, check))

    def payload(self):
        return b"".join(self.parts) + struct.pack("<i", 0)

    def run(self, argv):
        proc = subprocess.run(argv, input=self.payload(), capture_output=True, timeout=600)
        assert proc.returncode == 0, f"{argv} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}"
        out, pos, results = proc.stdout, 0, {}
        for name, count, ref, check in self.outputs:
            if count == "u64":
                results[name] = struct.unpack_from("<Q", out, pos)[0]
                pos += 8
            elif count == "str":
                results[name] = out[pos:pos + 32].split(b"\0")[0].decode()
                pos += 32
            else:
                results[name] = np.frombuffer(out, np.float32, count, pos).copy()
                pos += 4 * count
        assert pos == len(out), f"driver wrote {len(out)} bytes, expected {pos}"
        return results


def f32(a):
    return np.ascontiguousarray(a, np.float32).tobytes()


# (rows, tokens, threads): odd edges on purpose. 21 tokens = whole tiles of 4 and of 8
# plus a narrower leftover column (9: one tile and one token); 3 = a few sequences decoding together. The matrix x
# vector cases also vary the row length, so that kernels taking several blocks per step
# (4 in the AVX-512 Q4_0 one) meet every short last step, on one thread and on two.
# 6 x 6: a tile of 4 and a pair left over, in rows and in tokens (the NEON/RVV tiles
# are 4 rows; i8mm takes tokens in pairs).
MATMUL_SHAPES = {"gemv": (67, 1, 2), "gemv-tail1": (37, 1, 2), "gemv-tail2": (5, 1, 1),
                 "gemv-tail3": (19, 1, 1), "gemm": (37, 21, 2), "gemm-long": (21, 9, 1),
                 "batch": (13, 3, 2), "pairs": (6, 6, 2)}
# row length per shape: 32-block types get 64, 65, 66 and 19 blocks (608 = 19 * 32),
# K-quants 3, 9, 5 and 3 super-blocks; "gemm-long" rows are longer than the 2048
# weights a packed panel holds (81 blocks, 9 super-blocks)
K_LEGACY = {"gemv": 2048, "gemv-tail1": 2080, "gemv-tail2": 2112, "gemv-tail3": 608, "gemm": 608,
            "gemm-long": 2592, "batch": 2048, "pairs": 2048}
K_SUPER = {"gemv": 768, "gemv-tail1": 2304, "gemv-tail2": 1280, "gemv-tail3": 768, "gemm": 768,
           "gemm-long": 2304, "batch": 768, "pairs": 768}


def k_for(name, shape):
    block = T.TYPES[getattr(T, name)][1]
    return K_SUPER[shape] if block == 256 else K_LEGACY[shape]


# (heads, kv heads, head_dim, window, [(pos0, rows), ...] filling the cache in order).
# Every variant: short runs (16-key tiles, odd lengths), a prompt of 64 rows and one
# row of 520 keys (split into chunks), small heads.
ATTENTION_CASES = [
    (4, 2, 64, 0, [(0, 6), (6, 1), (7, 4)]),
    (4, 1, 256, 3, [(0, 6), (6, 1), (7, 4)]),
    (3, 3, 40, 0, [(0, 6), (6, 1), (7, 4)]),
    (8, 1, 64, 0, [(0, 19), (19, 1), (20, 3)]),
    (4, 2, 64, 0, [(0, 64), (64, 1)]),
    (2, 1, 32, 0, [(0, 520), (520, 1)]),
]
# x86 variants (native, fast) also: GQA 1..8 at depths crossing the 512-key split and
# 256-key chunks, long prompts, head sizes 32..128 (on and off the 64-wide path).
ATTENTION_DEPTH_CASES = [
    (8, 1, 64, 0, [(0, 70), (70, 1), (71, 530), (601, 1), (602, 3)]),
    (6, 2, 128, 0, [(0, 100), (100, 3), (103, 417), (520, 1)]),
    (4, 2, 80, 0, [(0, 515), (515, 1), (516, 2)]),
    (4, 4, 32, 100, [(0, 130), (130, 1), (131, 5)]),
    (9, 3, 48, 0, [(0, 64), (64, 17)]),
]


def attention_script(s, rng, cases):
    """Each case on 2 threads and on 1, against the oracle."""
    nb = NumpyBackend()
    for threads in (2, 1):
        s.cmd(("i", 1), ("i", threads))
        for c, (nh, nkv, hd, window, steps) in enumerate(cases):
            kv = nkv * hd
            n_ctx = sum(n for _, n in steps)
            cache = nb.kv_cache(1, n_ctx, kv)
            s.cmd(("i", 7), ("q", n_ctx), ("q", kv))
            for pos0, n in steps:
                q = rng.standard_normal((n, nh * hd), dtype=np.float32)
                k = rng.standard_normal((n, kv), dtype=np.float32)
                v = rng.standard_normal((n, kv), dtype=np.float32)
                ref = nb.attention(q, k, v, [cache] * n, 0, range(pos0, pos0 + n), nh, nkv, hd,
                                   1 / math.sqrt(hd), window)
                s.cmd(("i", 8), ("q", n), ("q", pos0), ("i", nh), ("i", nkv), ("i", hd),
                      ("f", 1 / math.sqrt(hd)), ("q", window), ("raw", f32(q)), ("raw", f32(k)),
                      ("raw", f32(v)))
                s.expect(f"attn-{c}-{nh}-{nkv}-{hd}-{window}-{pos0}-t{threads}", ref.size,
                         ref.ravel(), ("abs", 4e-3 * np.abs(v).max()))
    s.cmd(("i", 1), ("i", 2))
    return s


def build_script(seed=0):
    rng = np.random.default_rng(seed)
    s = Script()
    s.cmd(("i", 11))
    s.expect("variant", "str")
    for name in TYPES:
        tid = getattr(T, name)
        for shape, (rows, n, threads) in MATMUL_SHAPES.items():
            k = k_for(name, shape)
            s.cmd(("i", 1), ("i", threads))
            w = make_weights(name, rows, k, rng)
            x = rng.standard_normal((n, k), dtype=np.float32)
            wd = dequantize(w.tobytes(), tid, rows * k).reshape(rows, k)
            xq = quantize_activations(x, tid)
            if tid in (T.Q4_1, T.Q5_1):   # the minimum meets Q8_1's f16 s, not sum(xq)
                dq, m = Weight(name, (k, rows), tid, w.tobytes()).min_split()
                ref = (xq.astype(np.float64) @ dq.T.astype(np.float64)
                       + q8_1_sums(x).astype(np.float64) @ m.T.astype(np.float64)).astype(np.float32)
            else:
                ref = (xq.astype(np.float64) @ wd.T.astype(np.float64)).astype(np.float32)
            bound = (np.abs(xq).astype(np.float64) @ np.abs(wd).T.astype(np.float64))
            s.cmd(("i", 2), ("i", tid), ("q", rows), ("q", k), ("q", n), ("raw", w.tobytes()),
                  ("raw", f32(x)))
            s.expect(f"matmul-{name}-{shape}", n * rows, ref.ravel(), ("bound", bound.ravel()))
        s.cmd(("i", 1), ("i", 2))
        # dequantization of a whole matrix, and the activation rounding
        k = 512
        w = make_weights(name, 3, k, rng)
        s.cmd(("i", 3), ("i", tid), ("q", 3 * k), ("raw", w.tobytes()))
        s.expect(f"dequant-{name}", 3 * k, dequantize(w.tobytes(), tid, 3 * k), ("exact",))
        x = rng.standard_normal(k, dtype=np.float32) * 3
        s.cmd(("i", 4), ("i", tid), ("q", k), ("raw", f32(x)))
        s.expect(f"qact-{name}", k, quantize_activations(x[None, :], tid)[0], ("exact",))

    s.cmd(("i", 1), ("i", 2))  # the ops below with two threads
    nb = NumpyBackend()

    class FW:  # an F32 weight for the oracle
        def __init__(self, v):
            self.v, self.shape, self.type = v, v.shape, T.F32

        def values(self):
            return self.v

    for group, has_w in ((576, True), (64, True), (576, False)):
        x = rng.standard_normal((3, 576), dtype=np.float32) * 2
        w = rng.standard_normal(group, dtype=np.float32)
        ref = nb.rmsnorm(x, FW(w) if has_w else None, 1e-6)
        s.cmd(("i", 5), ("q", x.size), ("q", group), ("f", 1e-6), ("i", int(has_w)),
              ("raw", f32(x)), ("raw", f32(w)))
        s.expect(f"rmsnorm-{group}-{has_w}", x.size, ref.ravel(), ("rel", 2e-6))

    for neox in (False, True):
        for factors in (None, list(rng.random(16) + 0.5)):
            rope = RopeParams(32, 10000.0, 0.5, neox, factors)
            x = rng.standard_normal((5, 4 * 48), dtype=np.float32)
            ref = nb.rope(x.copy(), range(11, 16), 4, 48, rope)
            inv = rope.inv_freq()
            s.cmd(("i", 6), ("q", 5), ("q", 11), ("i", 4), ("i", 48), ("i", 32), ("i", int(neox)),
                  ("raw", struct.pack(f"<{len(inv)}d", *inv)), ("raw", f32(x)))
            s.expect(f"rope-{neox}-{factors is not None}", x.size, ref.ravel(), ("abs", 4e-6))

    attention_script(s, rng, ATTENTION_CASES)

    for gelu in (0, 1):
        g = rng.standard_normal(1000, dtype=np.float32) * 6
        g[:4] = [-100.0, 100.0, 0.0, -1e-5]
        u = rng.standard_normal(1000, dtype=np.float32)
        ref = nb.geglu(g, u) if gelu else nb.swiglu(g, u)
        s.cmd(("i", 9), ("i", gelu), ("q", 1000), ("raw", f32(g)), ("raw", f32(u)))
        # the oracle's 1 + tanh(y) cancels for y << 0 (absolute error ~6e-8 |g u|);
        # we compute the same value as g * sigmoid(2y), without the cancellation
        s.expect(f"glu-{gelu}", 1000, ref, ("relabs", 1e-5, 1e-7 * np.abs(g * u)))
    return s


_SCRIPT = None


def script():
    global _SCRIPT
    if _SCRIPT is None:
        _SCRIPT = build_script()
    return _SCRIPT


_RESULTS = {}
_DEPTH = {}


def depth_results_for(run_id):
    """The depth cases' script and its outputs on one x86 variant."""
    if "script" not in _DEPTH:
        _DEPTH["script"] = attention_script(Script(), np.random.default_rng(7),
                                            ATTENTION_DEPTH_CASES)
    if run_id not in _DEPTH:
        _, arch, variant, cpu = next(r for r in RUNS if r[0] == run_id)
        argv = driver_command(arch, variant, cpu)
        _DEPTH[run_id] = argv if isinstance(argv, str) else _DEPTH["script"].run(argv)
    res = _DEPTH[run_id]
    if isinstance(res, str):
        pytest.skip(res)
    return _DEPTH["script"], res


def results_for(run_id):
    if run_id not in _RESULTS:
        _, arch, variant, cpu = next(r for r in RUNS if r[0] == run_id)
        argv = driver_command(arch, variant, cpu)
        if isinstance(argv, str):
            _RESULTS[run_id] = argv
        else:
            _RESULTS[run_id] = script().run(argv)
    res = _RESULTS[run_id]
    if isinstance(res, str):
        pytest.skip(res)
    return res


def check(name, got, ref, how):
    assert got.shape == ref.shape, name
    assert np.all(np.isfinite(got)), f"{name}: non-finite output"
    kind = how[0]
    if kind == "exact":
        bad = np.flatnonzero(got != ref)
        assert bad.size == 0, f"{name}: {bad.size} values differ, first at {bad[0]}: {got[bad[0]]} vs {ref[bad[0]]}"
    elif kind == "bound":
        err = np.abs(got.astype(np.float64) - ref) / (how[1] + 1e-30)
        assert err.max() <= 1e-5, f"{name}: error {err.max():.3g} of sum|x||w| (limit 1e-5)"
    elif kind == "rel":
        err = np.abs(got - ref) / (np.abs(ref) + 1e-30)
        err = np.where(np.abs(ref) < 1e-30, np.abs(got), err)
        assert err.max() <= how[1], f"{name}: relative error {err.max():.3g} (limit {how[1]})"
    elif kind == "relabs":
        limit = how[1] * np.abs(ref) + how[2]
        bad = np.flatnonzero(np.abs(got - ref) > limit)
        assert bad.size == 0, f"{name}: {bad.size} values off, first {got[bad[0]]} vs {ref[bad[0]]}"
    elif kind == "abs":
        err = np.abs(got - ref).max()
        assert err <= how[1], f"{name}: error {err:.3g} (limit {how[1]:.3g})"




def _case_names():
    names = ["variant"]
    for name in TYPES:
        names += [f"matmul-{name}-{shape}" for shape in MATMUL_SHAPES]
        names += [f"dequant-{name}", f"qact-{name}"]
    names += ["rmsnorm", "rope", "attention", "glu"]
    return names


@pytest.mark.parametrize("case", _case_names())
@pytest.mark.parametrize("run_id", [r[0] for r in RUNS])
def test_variant(built, run_id, case):
    res = results_for(run_id)
    variant = next(r[2] for r in RUNS if r[0] == run_id)
    if case == "variant":
        assert res["variant"] == variant
        return
    outputs = script().outputs
    if case in ("rmsnorm", "rope", "attention", "glu"):
        prefix = {"attention": "attn"}.get(case, case)
        selected = [o for o in outputs if o[0].startswith(prefix + "-")]
    else:
        selected = [o for o in outputs if o[0] == case]
    assert selected
    for name, _, ref, how in selected:
        check(name, res[name], np.asarray(ref, np.float32).ravel(), how)


@pytest.mark.parametrize("run_id", [r[0] for r in RUNS if r[1] == "x86_64"])
def test_attention_at_depth(built, run_id):
    sc, res = depth_results_for(run_id)
    for name, _, ref, how in sc.outputs:
        check(name, res[name], np.asarray(ref, np.float32).ravel(), how)


# ---------------------------------------------------------------- the oracle itself

@pytest.mark.parametrize("name", [t for t in TYPES if t != "F32"])
def test_oracle_dequant_matches_gguf_py(name):
    """The oracle's dequantization (our reference) agrees with gguf-py's."""
    import gguf.quants as gq
    from gguf import GGMLQuantizationType as Q
    w = make_weights(name, 4, 512, np.random.default_rng(1))
    ours = dequantize(w.tobytes(), getattr(T, name), 4 * 512)
    theirs = gq.dequantize(w, getattr(Q, name)).astype(np.float32).ravel()
    np.testing.assert_array_equal(ours, theirs)


# ---------------------------------------------------------------- variant choice

def test_choose_variant_x86():
    assert kernels.choose_variant("x86_64", set()) == "generic"
    assert kernels.choose_variant("x86_64", {"avx2", "fma"}) == "generic"  # no f16c
    assert kernels.choose_variant("x86_64", {"avx2", "fma", "f16c"}) == "avx2"
    full = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    assert kernels.choose_variant("x86_64", full) == "avx512"
    assert kernels.choose_variant("x86_64", full - {"avx512_vnni"}) == "avx2"
    assert kernels.choose_variant("x86_64", full, override="generic") == "generic"
    with pytest.raises(UserError):
        kernels.choose_variant("x86_64", full, override="neon")
    with pytest.raises(UserError):
        kernels.choose_variant("sparc", set())


def test_detect_features_from_text():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma f16c\n"
    feats = kernels.detect_features("x86_64", cpuinfo=cpuinfo)
    assert kernels.choose_variant("x86_64", feats) == "avx2"
    a53 = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
    assert kernels.choose_variant("aarch64", kernels.detect_features("aarch64", cpuinfo=a53)) == "neon"
    a76 = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
    assert kernels.choose_variant("aarch64", kernels.detect_features("aarch64", cpuinfo=a76)) == "dotprod"
    assert kernels.choose_variant("riscv64", kernels.detect_features(
        "riscv64", cpuinfo="isa\t\t: rv64imafdc_zicsr_zifencei\n")) == "rv64gc"
    assert kernels.choose_variant("riscv64", kernels.detect_features(
        "riscv64", cpuinfo="isa\t\t: rv64imafdcv_zicsr\n")) == "rvv"
    n2 = a76.replace("asimddp", "asimddp sha3 sm3 sm4 asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg "
                     "dcpodp flagm2 frint svei8mm i8mm bf16 rng")
    assert kernels.choose_variant("aarch64", kernels.detect_features("aarch64", cpuinfo=n2)) == "i8mm"
    # AT_HWCAP words: aarch64 bit 20 = asimddp, 10 = asimdhp; riscv64 bit 21 = 'v'
    # AT_HWCAP2: aarch64 bit 13 = i8mm
    assert kernels.choose_variant("aarch64", kernels.detect_features("aarch64", hwcap=0b11)) == "neon"
    dp = 0b11 | 1 << 9 | 1 << 10 | 1 << 20
    assert kernels.choose_variant("aarch64", kernels.detect_features("aarch64", hwcap=dp)) == "dotprod"
    assert kernels.choose_variant("aarch64", kernels.detect_features(
        "aarch64", hwcap=dp, hwcap2=1 << 13)) == "i8mm"
    assert kernels.choose_variant("aarch64", kernels.detect_features(
        "aarch64", hwcap=0b11, hwcap2=1 << 13)) == "neon"   # i8mm needs dotprod and fp16 too
    rv = sum(1 << (ord(c) - ord("a")) for c in "imafdc")
    assert kernels.choose_variant("riscv64", kernels.detect_features("riscv64", hwcap=rv)) == "rv64gc"
    assert kernels.choose_variant("riscv64", kernels.detect_features(
        "riscv64", hwcap=rv | 1 << 21)) == "rvv"


@pytest.mark.parametrize("arch,cpu,expected", [
    ("aarch64", "cortex-a53", "neon"),
    ("aarch64", "cortex-a76", "dotprod"),
    ("aarch64", "max", "i8mm"),
    ("riscv64", "rv64", "rv64gc"),
    ("riscv64", QEMU_RVV.format(256), "rvv"),
])
def test_choice_on_emulated_cpu(built, arch, cpu, expected):
    """AT_HWCAP as the emulated CPU reports it leads to the variant that runs there."""
    if not _qemu(arch):
        pytest.skip(f"qemu-{arch} is not installed (apt-get install qemu-user)")
    fallback = kernels.VARIANTS[arch][0]
    s = Script()
    s.cmd(("i", 10))
    s.expect("hwcap", "u64")
    s.cmd(("i", 12))
    s.expect("hwcap2", "u64")
    argv = [_qemu(arch), "-cpu", cpu, build.output_path(arch, fallback, driver=True)]
    res = s.run(argv)
    feats = kernels.detect_features(arch, hwcap=res["hwcap"], hwcap2=res["hwcap2"])
    assert kernels.choose_variant(arch, feats) == expected


@pytest.mark.parametrize("variant,cpu,n", [("dotprod", "cortex-a53", 1), ("i8mm", "cortex-a76", 4)])
def test_best_variant_sigills_without_its_extension(built, variant, cpu, n):
    """The dotprod and i8mm builds really need their extension (so the fallbacks
    matter); i8mm's smmla runs for pairs of tokens."""
    if not _qemu("aarch64"):
        pytest.skip("qemu-aarch64 is not installed (apt-get install qemu-user)")
    s = Script()
    s.cmd(("i", 2), ("i", T.Q8_0), ("q", 4), ("q", 64), ("q", n),
          ("raw", make_weights("Q8_0", 4, 64, np.random.default_rng(0)).tobytes()),
          ("raw", f32(np.ones((n, 64)))))
    argv = [_qemu("aarch64"), "-cpu", cpu, build.output_path("aarch64", variant, driver=True)]
    proc = subprocess.run(argv, input=s.payload(), capture_output=True, timeout=120)
    if proc.returncode == 0:
        pytest.skip("the compiler emitted no dotprod instruction on this path")
    assert proc.returncode in (-4, 132), proc.returncode  # SIGILL


# ---------------------------------------------------------------- loading

def test_env_override(built, monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", None)
    monkeypatch.setenv("LLAMAZIP_KERNEL", "generic" if HOST == "x86_64" else kernels.VARIANTS[HOST][0])
    k = kernels.load()
    assert k.variant == kernels.VARIANTS[HOST][0]
    assert k.chosen_by == "LLAMAZIP_KERNEL"
    assert k.lib.lz_variant().decode() == k.variant
    monkeypatch.setattr(kernels, "_loaded", None)


def test_missing_library_names_the_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "dev_library_path", lambda a, v: str(tmp_path / "none.so"))
    with pytest.raises(FileNotFoundError, match="python kernels/build.py"):
        kernels.library_bytes("x86_64", "generic")


def test_load_from_bytes_memfd_and_cache(built, monkeypatch, tmp_path):
    if HOST not in kernels.VARIANTS:
        pytest.skip("no kernels for this host")
    variant = kernels.VARIANTS[HOST][0]
    _, path = kernels.library_bytes(HOST, variant)   # the dev tree: a path, not bytes
    with open(path, "rb") as f:
        data = f.read()
    lib, source = kernels._open_bytes(data, HOST, variant)
    assert source == "memfd"
    assert lib.lz_abi_version() == kernels.ABI_VERSION
    # no memfd: written once to the per-version cache, atomically, then loaded
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setenv("LLAMAZIP_CACHE", str(tmp_path))
    lib2, path = kernels._open_bytes(data, HOST, variant)
    assert path.startswith(str(tmp_path)) and os.path.exists(path)
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]
    with open(path, "rb") as f:
        assert f.read() == data


def test_load_from_zip_bundle(built, tmp_path):
    """Imported from a ZIP, the runtime takes kernels/<arch>/<variant>.so from the ZIP."""
    if HOST not in kernels.VARIANTS:
        pytest.skip("no kernels for this host")
    zpath = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for name in os.listdir(os.path.join(ROOT, "runtime")):
            if name.endswith(".py"):
                z.write(os.path.join(ROOT, "runtime", name), f"runtime/{name}")
        for variant in kernels.VARIANTS[HOST]:
            z.write(build.output_path(HOST, variant), f"kernels/{HOST}/{variant}.so")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from runtime import kernels; "
            "k = kernels.load(); print(k.variant, k.source, kernels.__file__)")
    env = dict(os.environ, LLAMAZIP_CACHE=str(tmp_path / "cache"))
    env.pop("LLAMAZIP_KERNEL", None)
    out = subprocess.run([sys.executable, "-S", "-c", code, str(zpath)], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    variant, source, where = out.stdout.split()
    assert variant == kernels.choose_variant(HOST, kernels.detect_features(HOST))
    assert source == "memfd"
    assert where.startswith(str(zpath))
    assert not (tmp_path / "cache").exists()


def test_build_is_reproducible(built, tmp_path, monkeypatch):
    arch, variant = "x86_64", "generic"
    first = open(build.output_path(arch, variant), "rb").read()
    monkeypatch.setattr(build, "BUILD", str(tmp_path))
    again = open(build.build(arch, variant, force=True, quiet=True), "rb").read()
    assert first == again


# ---------------------------------------------------------------- the C backend

def native_variants():
    if HOST not in kernels.VARIANTS:
        return []
    feats = kernels.detect_features(HOST)
    return [v for v in kernels.VARIANTS[HOST] if kernels.REQUIRES[(HOST, v)] <= feats]


def test_recycled_activation_buffers(built):
    """Op outputs reuse freed buffers of the same size: a view keeps its parent's
    memory out of the pool, and tensor() still hands out zeros."""
    from runtime.backend_c import CBackend
    cb = CBackend(n_threads=2)
    x = cb.tensor(4, 64, [float(i) for i in range(256)])
    view = cb.take_rows(x, 1, 3)
    del x
    churn = [cb.tensor(4, 64, [-1.0] * 256) for _ in range(12)]   # would take x's buffer
    assert cb.to_floats(view) == [[float(i) for i in range(64 * r, 64 * (r + 1))] for r in (1, 2)]
    del churn
    fresh = cb.tensor(4, 64)
    assert all(v == 0.0 for row in cb.to_floats(fresh) for v in row)
    y = cb.swiglu(cb.tensor(4, 64, [1.0] * 256), cb.tensor(4, 64, [2.0] * 256))
    assert all(v == pytest.approx(2.0 / (1.0 + math.exp(-1.0))) for row in cb.to_floats(y) for v in row)


def test_block_geometry_agrees_with_python(built):
    """kernels/quants.h's one block-geometry table and runtime/ggml_types.py's agree
    on every type either side knows."""
    import ctypes
    from runtime.backend_c import CBackend
    lib = CBackend(n_threads=1).lib
    block, size = ctypes.c_int(), ctypes.c_int()
    known = set()
    for type_id in range(64):
        if lib.lz_block_geometry(type_id, ctypes.byref(block), ctypes.byref(size)) == 0:
            known.add(type_id)
            assert T.TYPES[type_id][1:] == (block.value, size.value), T.type_name(type_id)
    assert known == set(T.TYPES)


@pytest.mark.parametrize("variant", native_variants())
def test_backend_ops_match_oracle(built, variant):
    from runtime.backend_c import CBackend
    cb, nb = CBackend(n_threads=2, variant=variant), NumpyBackend()
    rng = np.random.default_rng(3)

    def tensor(a):
        t = cb.tensor(*a.shape)
        np.asarray(t)[:] = a
        return t

    x = rng.standard_normal((5, 96), dtype=np.float32)
    y = rng.standard_normal((5, 96), dtype=np.float32)
    tx = tensor(x)
    cb.add(tx, tensor(y))
    cb.scale(tx, 0.5)
    np.testing.assert_allclose(np.asarray(tx), (x + y) * np.float32(0.5), rtol=1e-6)
    expected = (x + y) * np.float32(0.5)
    assert [cb.logits_row(tx, r).top(1)[0][1] for r in range(5)] == \
        [int(i) for i in np.argmax(expected, axis=1)]
    assert cb.to_floats(cb.take_rows(tx, 1, 2))[0] == pytest.approx(list((x[1] + y[1]) * 0.5))
    lp = cb.logprobs_rows(tensor(x), [0, 5, 7, 9, 95])
    np.testing.assert_allclose(lp, nb.logprobs_rows(x, [0, 5, 7, 9, 95]), rtol=1e-6)


def test_backend_forward_matches_oracle(built):
    """A real model's logits: the same top token, and close values (the numerics chain
    is chaotic: 8-bit activation rounding flips amplify f32 summation-order noise; the
    oracle against itself with f64 sums differs by ~1 on logits of ~30)."""
    from runtime.backend_c import CBackend
    from runtime.gguf import GGUFFile
    from runtime.model import Model
    path = os.path.join(os.environ.get("LLAMAZIP_CACHE", os.path.expanduser("~/.cache/llamazip")),
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip("SmolLM2 not cached (python -m tests.models)")
    g = GGUFFile.open(path)
    toks = [1, 504, 3458, 282, 4649, 314, 260, 1345]
    out = []
    for b in (NumpyBackend(), CBackend(n_threads=2)):
        m = Model(g, b, n_ctx=64)
        out.append(np.array(b.to_floats(m.forward(toks, 0, last_only=False))))
    ref, got = out
    # our top token is the oracle's, or within the chaos margin of it (near ties)
    rows = np.arange(len(toks))
    assert (ref[rows, got.argmax(1)] >= ref.max(1) - 1.5).all()
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.75
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.999
