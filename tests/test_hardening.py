"""Hostile input: crafted GGUFs, fuzzed headers, the kernel cache, damaged bundles,
unbounded memory, hangs and signals. Each case is run the way a user meets it (the
command line in a subprocess) and must end in one clear line and exit 2, or a run."""

import json
import os
import subprocess
import sys

import pytest

from runtime import ggml_types as T
from tests import fuzz_gguf as F
from tests import synthetic
from tests.models import smollm2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["-p", "Hi", "-n", "2", "--temp", "0", "--backend", "c", "-c", "32"]


def cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "runtime"] + [str(a) for a in args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, **kw)


def one_line_error(result, *fragments):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return synthetic.spm_llama(str(tmp_path_factory.mktemp("harden")), weight_type=T.Q8_0)


# ---------------------------------------------------------------- crafted GGUFs

def _shape(name, change):
    def edit(h):
        for t in h.tensors:
            if t[0] == name:
                change(t)
    return edit


def _shorten(key):
    def edit(h):
        i = h.index(key)
        et, items = h.kv[i][2]
        h.kv[i][2] = (et, items[:-1])
    return edit


def _rename(key, new):
    def edit(h):
        h.kv[h.index(key)][0] = new
    return edit


CRAFTED = {
    # name: (edit of the header, words the one-line error must hold)
    "alignment_string": (lambda h: F.set_key(h, b"general.alignment", F.STRING, b"x"),
                         ["general.alignment", "power of two"]),
    "nested_5000": (lambda h: F.set_key(h, b"x.deep", F.ARRAY, F._nested(5000)),
                    ["x.deep", "nests arrays"]),
    "bos_string": (lambda h: F.set_key(h, b"tokenizer.ggml.bos_token_id", F.STRING, b"1"),
                   ["bos_token_id", "integer"]),
    "head_count_0": (lambda h: F.set_key(h, b"llama.attention.head_count", F.UINT32, 0),
                     ["llama.attention.head_count", "from 1"]),
    "head_count_kv_0": (lambda h: F.set_key(h, b"llama.attention.head_count_kv", F.UINT32, 0),
                        ["head_count_kv", "from 1"]),
    "head_count_kv_3": (lambda h: F.set_key(h, b"llama.attention.head_count_kv", F.UINT32, 3),
                        ["head_count_kv", "divisor"]),
    # the real crash: one flipped byte in this key name made kv heads = heads
    "head_count_kv_renamed": (_rename(b"llama.attention.head_count_kv",
                                      b"llama.attention.head_count_kw"),
                              ["attn_k.weight", "shape"]),
    "token_type_short": (_shorten(b"tokenizer.ggml.token_type"), ["token_type", "tokens"]),
    # found by the fuzzer: Config counted a vocabulary that was a number
    "tokens_float": (lambda h: F.set_key(h, b"tokenizer.ggml.tokens", F.FLOAT32, 1.5),
                     ["tokenizer.ggml.tokens", "array of strings"]),
    "embedding_1e9": (lambda h: F.set_key(h, b"llama.embedding_length", F.UINT32, 10**9),
                      ["embedding_length", "integer from 1"]),
    "key_length_2048": (lambda h: F.set_key(h, b"llama.attention.key_length", F.UINT32, 2048),
                        ["key_length"]),
    "rope_dims_odd": (lambda h: F.set_key(h, b"llama.rope.dimension_count", F.UINT32, 7),
                      ["rope.dimension_count", "even"]),
    "eps_nan": (lambda h: F.set_key(h, b"llama.attention.layer_norm_rms_epsilon", F.FLOAT32,
                                    float("nan")), ["layer_norm_rms_epsilon", "finite"]),
    "norm_shape": (_shape(b"blk.0.attn_norm.weight", lambda t: t[1].__setitem__(0, 32)),
                   ["blk.0.attn_norm.weight", "shape"]),
    "q_rows": (_shape(b"blk.1.attn_q.weight", lambda t: t.__setitem__(1, [64, 32])),
               ["blk.1.attn_q.weight", "shape"]),
    "embd_rows": (_shape(b"token_embd.weight", lambda t: t.__setitem__(1, [64, 1024])),
                  ["token_embd.weight"]),
    "dim_zero": (_shape(b"output.weight", lambda t: t[1].__setitem__(1, 0)),
                 ["output.weight", "dimension"]),
    "offset_huge": (_shape(b"blk.0.ffn_up.weight", lambda t: t.__setitem__(3, 2**63)),
                    ["blk.0.ffn_up.weight", "ends at byte"]),
    "offset_unaligned": (_shape(b"blk.0.ffn_up.weight", lambda t: t.__setitem__(3, t[3] + 1)),
                         ["blk.0.ffn_up.weight", "alignment"]),
    "vocab_size": (lambda h: F.set_key(h, b"llama.vocab_size", F.UINT32, 100000),
                   ["vocab_size"]),
    "bias_alone": (lambda h: h.tensors.append([b"blk.0.attn_q.bias", [64], 0, 0]),
                   ["attn_q.bias"]),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_gguf_one_line_exit_2(case, spm_model, tmp_path):
    edit, words = CRAFTED[case]
    path = F.write_case(spm_model, str(tmp_path / f"{case}.gguf"), edit)
    one_line_error(cli("-m", path, *RUN), *words)


def test_unchanged_header_runs(spm_model, tmp_path):
    """The harness itself: a header written back unchanged is the same model."""
    path = F.write_case(spm_model, str(tmp_path / "same.gguf"), lambda h: None)
    a, b = cli("-m", path, *RUN), cli("-m", spm_model, *RUN)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_flipped_key_of_real_smollm2(tmp_path):
    """The reported segfault: head_count_kv's name damaged in the real SmolLM2 file."""
    path = F.write_case(smollm2(), str(tmp_path / "smol.gguf"),
                        _rename(b"llama.attention.head_count_kv",
                                b"llama.attention.head_count_kX"))
    one_line_error(cli("-m", path, *RUN), "attn_k.weight", "shape")


def test_build_refuses_what_the_runtime_refuses(spm_model, tmp_path):
    out = tmp_path / "x.llamafile"
    for case in ("head_count_kv_renamed", "token_type_short", "bos_string"):
        path = F.write_case(spm_model, str(tmp_path / f"{case}.gguf"), CRAFTED[case][0])
        result = subprocess.run([sys.executable, "build.py", "--model", path, "-o", str(out),
                                 "--arch", "x86_64"], capture_output=True, text=True, cwd=REPO,
                                timeout=300)
        one_line_error(result, *CRAFTED[case][1])
        assert not out.exists()


# ---------------------------------------------------------------- fuzzing

def test_fuzzed_headers_never_crash(spm_model, tmp_path):
    """Structured mutations and byte flips of SmolLM2's and a synthetic header, each
    run through the command line on the C backend in a child process: every one
    ends in exit 2 with one line, or a run; never a signal, traceback or hang.
    (bench/fuzz_gguf.py runs 10,000 of these.)"""
    out = tmp_path / "fuzz.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_gguf", "--count", "60", "--seed", "3", "--timeout",
         "120", "--model", smollm2(), "--model", spm_model, "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=1800)
    report = json.loads(out.read_text())
    assert report["findings"] == [], result.stdout[-5000:]
    counts = report["counts"]
    assert sum(counts.values()) == 60
    # both kinds of ending occur, so the cases reach the model as well as the checks
    assert counts["error"] > 0 and counts["ok"] > 0, counts


# ---------------------------------------------------------------- sanitizers

def _sanitizer_build(driver):
    """The ASan+UBSan build of the host's best kernel variant, or a skip reason."""
    import shutil
    from runtime import kernels
    from tests.test_kernels import build
    arch = kernels.machine_arch()
    if arch not in kernels.VARIANTS or not shutil.which(build.host_cc()):
        return None, f"no host C compiler ({build.host_cc()}) for a sanitizer build"
    try:
        runtimes = build.sanitizer_runtimes()
    except RuntimeError as e:
        return None, str(e)
    variant = kernels.choose_variant(arch, kernels.detect_features(arch))
    out = os.path.join(build.BUILD, arch, f"{variant}-asan" + ("-test" if driver else ".so"))
    sources = [os.path.join(build.HERE, s) for s in build.COMMON + build.HEADERS +
               list(build.VARIANTS[arch][variant][1]) + ["test_driver.c"]]
    if not os.path.exists(out) or os.path.getmtime(out) < max(map(os.path.getmtime, sources)):
        out = build.build_sanitized(arch, variant, driver)
    return (out, runtimes), None


def test_kernels_under_asan_and_ubsan():
    """The kernel test driver's whole script (every op, every type) built with ASan
    and UBSan: no report, and the same results the plain build is checked against."""
    import numpy as np
    from tests import test_kernels as TK
    built, why = _sanitizer_build(driver=True)
    if built is None:
        pytest.skip(why)
    driver, _ = built
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
    results = TK.script().run([driver])
    for name, _, ref, how in TK.script().outputs:
        if isinstance(ref, str) or name == "variant" or how is None:
            continue
        TK.check(name, results[name], np.asarray(ref, np.float32).ravel(), how)


def test_fuzzed_headers_under_asan(spm_model, tmp_path):
    """A sample of fuzzed files through the command line with the sanitized kernels
    loaded (python itself runs with the sanitizer runtimes preloaded)."""
    built, why = _sanitizer_build(driver=False)
    if built is None:
        pytest.skip(why)
    library, runtimes = built
    out = tmp_path / "asan.json"
    env = dict(os.environ, LD_PRELOAD=" ".join(runtimes),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_gguf", "--count", "16", "--seed", "11",
         "--timeout", "300", "--model", spm_model, "--asan", library, "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=1800, env=env)
    report = json.loads(out.read_text())
    assert report["findings"] == [], result.stdout[-5000:] + result.stderr[-3000:]
    assert sum(report["counts"].values()) == 16
