"""The engine end to end: the oracle's arithmetic, the model, the command line.

Reference figures (greedy text, perplexities) were produced by llama.cpp on the
same files; they are the issue's acceptance numbers.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from runtime import ggml_types as T  # noqa: E402
from runtime.backend_numpy import NumpyBackend, dequantize  # noqa: E402
from runtime.gguf import GGUFFile  # noqa: E402
from runtime.model import Model  # noqa: E402
from tests import synthetic  # noqa: E402
from tests.models import smollm2, smollm2_q8_0  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPL = "/usr/share/common-licenses/GPL-3"
ALL_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
             T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def run_cli(*args, env=None, python=(sys.executable,), timeout=900):
    return subprocess.run([*python, "-m", "runtime", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------ oracle arithmetic

@pytest.mark.parametrize("type_id", ALL_TYPES, ids=lambda t: T.type_name(t))
def test_oracle_dequantization_equals_gguf_quants(type_id):
    rng = np.random.default_rng(type_id)
    data, qtype = synthetic.random_weight(rng, 8, 512, type_id)
    ours = dequantize(np.ascontiguousarray(data).tobytes(), type_id, 8 * 512)
    ref = gguf.quants.dequantize(data, qtype).reshape(-1)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return synthetic.spm_llama(str(tmp_path_factory.mktemp("spm")), weight_type=T.Q8_0)


def test_batch_forward_equals_token_by_token(spm_model):
    """The KV cache and the causal mask: a prompt computed in one batch gives the same
    logits as feeding it one token at a time."""
    ids = [1, 45, 300, 7, 99, 12, 260]
    batch = Model(GGUFFile.open(spm_model), NumpyBackend(), n_ctx=32)
    all_rows = batch.forward(ids, 0, last_only=False)
    step = Model(GGUFFile.open(spm_model), NumpyBackend(), n_ctx=32)
    rows = np.concatenate([step.forward([t], i, last_only=False) for i, t in enumerate(ids)])
    np.testing.assert_allclose(all_rows, rows, rtol=1e-4, atol=1e-4 * np.abs(rows).max())
    assert np.abs(all_rows[0] - all_rows[-1]).max() > 1e-3  # positions matter


def test_synthetic_spm_model_runs_and_tokenizes_like_sentencepiece(spm_model, tmp_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(os.path.dirname(spm_model), "spm.model"))
    text = "The GNU General Public License is a free, copyleft license."
    r = run_cli("-m", spm_model, "--tokenize", "-p", text)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [1] + sp.encode(text)
    r = run_cli("-m", spm_model, "-p", text, "-n", "12", "--temp", "0", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # random weights: some text, deterministic below
    again = run_cli("-m", spm_model, "-p", text, "-n", "12", "--temp", "0", "--backend", "numpy")
    assert again.stdout == r.stdout


# ------------------------------------------------------------------ SmolLM2 against llama.cpp

GREEDY_PROMPT = "Once upon a time, in a small village,"
# llama-server's greedy continuation (-n 24, temperature 0, its default flash attention),
# token by token, with the gap between its top two log-probabilities at each step
# (n_probs 2). Where that gap is within rounding, llama.cpp does not agree with itself
# either: with -fa off the same server continues "... and had a special" (the gap at
# " been" is 0.087), and the two engines' log-probabilities differ by ~0.08 nats on
# average (bench/bench_logprobs_vs_llama.py). So the text must agree up to the first
# step whose gap is below 0.15 nats; after it, either choice is llama.cpp's own.
GREEDY_LLAMA_CPP_STEPS = [
    (" there", 1.5637), (" was", 0.4936), (" a", 3.0462), (" wise", 0.6152), (" old", 0.9977),
    (" w", 0.2448), ("izard", 5.658), (" named", 2.7602), (" El", 0.3143), ("w", 0.9406),
    ("es", 0.5283), (".", 2.7736), (" El", 2.4261), ("w", 9.8364), ("es", 10.0701),
    (" was", 0.5413), (" a", 0.0758), (" master", 0.1772), (" of", 3.8133), (" magic", 0.9612),
    (" and", 0.2679), (" had", 1.5645), (" been", 0.0872), (" watching", 0.1004)]
GREEDY_LLAMA_CPP = "".join(piece for piece, _ in GREEDY_LLAMA_CPP_STEPS)
ROUNDING_GAP = 0.15


def test_smollm2_greedy_matches_llama_cpp():
    r = run_cli("-m", smollm2(), "-p", GREEDY_PROMPT, "-n", "24", "--temp", "0")
    assert r.returncode == 0, r.stderr
    decided = next(i for i, (_, gap) in enumerate(GREEDY_LLAMA_CPP_STEPS) if gap < ROUNDING_GAP)
    assert decided >= 16   # most of the text is decided by a clear margin
    expected = "".join(piece for piece, _ in GREEDY_LLAMA_CPP_STEPS[:decided])
    assert r.stdout.startswith(expected), (r.stdout, expected)
    assert len(r.stdout.rstrip("\n")) > len(expected)   # and it went on after


def test_smollm2_oracle_agrees_with_c_backend_along_llama_cpp_text():
    """The oracle is checked by its logits, not its greedy text: NumPy sums float32 in
    whatever order the BLAS picks for the CPU (OpenBLAS's SkylakeX and Haswell kernels
    differ), which moves logits by ~1e-3 and flips near-ties (a top-two margin of
    0.05 at "had" -> " been" / " a"), so its text depends on the machine; the C
    backend's text is the one compared with llama.cpp's (above).

    Along llama.cpp's greedy text both backends' logits agree within assert_agrees'
    tolerance (measured: worst 0.034..0.036, mean 0.032..0.035 of the largest and
    mean |logit| under both OpenBLAS kernels); and wherever the oracle's top two are
    more than a logit apart, its pick is llama.cpp's next token.
    """
    from runtime.backend_c import CBackend
    from runtime.tokenizer import Tokenizer
    from tests.test_models import assert_agrees
    model = GGUFFile.open(smollm2())
    tokenizer = Tokenizer.from_gguf(model)
    n_prompt = len(tokenizer.encode(GREEDY_PROMPT, add_special=True, parse_special=True))
    ids = tokenizer.encode(GREEDY_PROMPT + GREEDY_LLAMA_CPP, add_special=True,
                           parse_special=True)
    oracle = np.array(Model(model, NumpyBackend(), n_ctx=64).forward(ids, 0, last_only=False))
    c = np.array(Model(model, CBackend(n_threads=2), n_ctx=64).forward(ids, 0,
                                                                        last_only=False))
    assert_agrees(c, oracle, "SmolLM2 along llama.cpp's text")
    clear = 0
    for pos in range(n_prompt - 1, len(ids) - 1):
        first, second = np.sort(oracle[pos])[-2:][::-1]
        if first - second > 1.0:
            clear += 1
            assert int(oracle[pos].argmax()) == ids[pos + 1], (pos, tokenizer.decode(ids[:pos + 2]))
    assert clear >= 10, clear   # most of the text is decided by a clear margin


def _perplexity(model, tmp_path):
    text = open(GPL, "rb").read()[:20000]
    src = tmp_path / "gpl.txt"
    src.write_bytes(text)
    r = run_cli("-m", model, "--perplexity", "-f", str(src), "-c", "128")
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"PPL = (\d+\.\d{4}) \+/- (\d+\.\d{4})\n", r.stdout)
    assert m, r.stdout
    return float(m.group(1))


# llama-perplexity -c 128 -b 128 on the same text. Its own figure moves with rounding
# alone: Q8_0 27.8133 with -fa on and 27.8774 with -fa off (-t 2, default batch),
# Q4_1 27.9554 with -b 128 and 28.0717 with the default batch (0.4%). Our rounding
# follows llama.cpp's op by op where it can (bench/bench_kl_vs_llama.py: mean KL
# 0.0045-0.0046 against it, llama.cpp -fa off against -fa on 0.0044), so the bound is
# twice llama.cpp's own spread: a real error (a wrong mask, scale or norm) moves
# perplexity by far more.
@pytest.mark.skipif(not os.path.exists(GPL), reason="needs /usr/share/common-licenses/GPL-3")
@pytest.mark.parametrize("which,llama_cpp_ppl", [("Q4_1", 27.9554), ("Q8_0", 27.8079)])
def test_smollm2_perplexity_within_one_percent_of_llama_cpp(which, llama_cpp_ppl, tmp_path):
    model = smollm2() if which == "Q4_1" else smollm2_q8_0()
    ppl = _perplexity(model, tmp_path)
    assert abs(ppl - llama_cpp_ppl) / llama_cpp_ppl < 0.01, ppl


# ------------------------------------------------------------------ bad input

def _one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_bad_inputs_get_one_line_and_exit_2(tmp_path, spm_model):
    _one_line_error(run_cli("-m", str(tmp_path / "missing.gguf"), "-p", "hi"), "not found")
    (tmp_path / "notes.txt").write_text("just text")
    _one_line_error(run_cli("-m", str(tmp_path / "notes.txt"), "-p", "hi"), "not a GGUF")
    data = open(spm_model, "rb").read()
    (tmp_path / "trunc.gguf").write_bytes(data[:len(data) // 2])
    _one_line_error(run_cli("-m", str(tmp_path / "trunc.gguf"), "-p", "hi"), "truncated")
    (tmp_path / "head.gguf").write_bytes(data[:100])
    _one_line_error(run_cli("-m", str(tmp_path / "head.gguf"), "-p", "hi"), "truncated")
    # unknown metadata value type
    bad = bytearray(data)
    at = bad.index(b"llama.block_count") + len(b"llama.block_count")
    bad[at:at + 4] = (77).to_bytes(4, "little")
    (tmp_path / "kv.gguf").write_bytes(bytes(bad))
    _one_line_error(run_cli("-m", str(tmp_path / "kv.gguf"), "-p", "hi"), "unknown value type 77")
    # a prompt longer than the context
    _one_line_error(run_cli("-m", spm_model, "-c", "8", "-p", "word " * 40), "context", "-c")
    _one_line_error(run_cli("-p", "hi"), "-m")
    _one_line_error(run_cli("-m", spm_model, "-n", "many"), "--help")


def test_bench_runs_llama_bench_test_grid(spm_model):
    """--bench takes llama-bench's lists (-p, -n, -b, -d) and -pg, and runs every
    combination: pp and tg per depth and batch, the pg pair, with its field names."""
    import json
    r = run_cli("-m", spm_model, "--bench", "--json", "-p", "8,16", "-n", "4", "-d", "0,8",
                "-b", "4,16", "-pg", "8,2", "-r", "1", "-t", "1", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    got = [(t["n_prompt"], t["n_gen"], t["n_depth"], t["n_batch"]) for t in json.loads(r.stdout)]
    want = [(p, n, d, b) for b in (4, 16) for d in (0, 8)
            for p, n in ((8, 0), (16, 0), (0, 4), (8, 2))]
    assert got == want
    r = run_cli("-m", spm_model, "--bench", "-p", "8", "-n", "2", "-d", "4", "-r", "1", "-t", "1",
                "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "t/s" not in line
            and "---" not in line]
    assert [row.split(" | ")[-2] for row in rows] == ["pp8 @ d4", "tg2 @ d4"]


def test_bench_only_flags_are_refused_elsewhere(spm_model):
    _one_line_error(run_cli("-m", spm_model, "-p", "hi", "-n", "3,4"), "-n", "--bench")
    _one_line_error(run_cli("-m", spm_model, "-p", "hi", "-d", "64"), "-d", "--bench")
    _one_line_error(run_cli("-m", spm_model, "--bench", "-p", "x,8"), "-p", "comma")
    _one_line_error(run_cli("-m", spm_model, "--bench", "-p", "16", "-n", "4", "-c", "8"),
                    "context", "-c")


def test_unsupported_architecture_and_tensor_type(tmp_path):
    spm_path = synthetic.train_spm(str(tmp_path / "spm"))
    arch = synthetic.write_model(str(tmp_path / "arch.gguf"), spm_path, arch="bloom")
    _one_line_error(run_cli("-m", arch, "-p", "hi"), "bloom", "llama")
    iq = synthetic.write_model(str(tmp_path / "iq.gguf"), spm_path, weight_type=T.Q8_0)
    data = bytearray(open(iq, "rb").read())
    # retag one tensor as IQ4_NL (20) in the tensor table: name, n_dims, dims, type
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    data[type_at:type_at + 4] = (20).to_bytes(4, "little")
    (tmp_path / "iq.gguf").write_bytes(bytes(data))
    _one_line_error(run_cli("-m", str(tmp_path / "iq.gguf"), "-p", "hi"), "IQ4_NL")


# ------------------------------------------------------------------ the bare-python rule

def test_runs_without_numpy_or_sentencepiece(spm_model, tmp_path):
    """`python -S` drops site-packages: numpy, sentencepiece, gguf all unimportable."""
    probe = subprocess.run([sys.executable, "-S", "-c", "import numpy"], capture_output=True)
    assert probe.returncode != 0
    r = run_cli("-m", spm_model, "-p", "free software", "-n", "6", "--temp", "0",
                python=(sys.executable, "-S"))
    assert r.returncode == 0, r.stderr
    with_numpy = run_cli("-m", spm_model, "-p", "free software", "-n", "6", "--temp", "0")
    assert r.stdout == with_numpy.stdout
    r = run_cli("-m", spm_model, "--tokenize", "-p", "free software",
                python=(sys.executable, "-S"))
    assert json.loads(r.stdout)[0] == 1
