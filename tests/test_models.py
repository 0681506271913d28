"""Every architecture we run: tiny synthetic models with the tensor names and shapes
the real ones have, the C kernels against the NumPy oracle, and Gemma 3 270M against
llama.cpp.

Synthetic weights use the type mix of a real Q4_K_M file (Q4_K, Q6_K, Q5_0, Q8_0;
128-wide rows are not whole 256-blocks, so they fall back like Gemma 3's 640-wide
ones do). See agreement_error for the tolerance.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gguf")

from runtime import kernels  # noqa: E402
from runtime.backend_c import CBackend  # noqa: E402
from runtime.backend_numpy import NumpyBackend  # noqa: E402
from runtime.gguf import GGUFFile  # noqa: E402
from runtime.model import SUPPORTED_ARCHITECTURES, Model  # noqa: E402
from tests import synthetic  # noqa: E402
from tests.models import gemma3  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPL = "/usr/share/common-licenses/GPL-3"

# A short prompt (token ids of the synthetic vocabulary), longer than WINDOW.
PROMPT = [1, 45, 300, 7, 99, 12, 260, 31, 8, 77]
WINDOW = 4

# Shapes as the real models have them, scaled down: grouped-query attention
# everywhere, Gemma's head_dim wider than dim/heads with one kv head and seven layers
# (five local, one global, one local), LongRoPE factors on Phi-3.
SHAPE = dict(dim=128, n_heads=4, n_kv_heads=2, ffn_dim=256, n_layers=2, weight_std="fan_in")
ARCHS = {
    "llama": {},
    "mistral": dict(window=WINDOW),
    "qwen2": {},
    "qwen3": {},
    "phi3": dict(long_rope=True),
    "gemma3": dict(head_dim=64, n_kv_heads=1, n_layers=7, window=WINDOW, tied=True),
}


def run_cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def usable_variants():
    arch = kernels.machine_arch()
    have = kernels.detect_features(arch)
    return [v for v in kernels.VARIANTS.get(arch, ()) if kernels.REQUIRES[(arch, v)] <= have]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return synthetic.train_spm(str(tmp_path_factory.mktemp("spm") / "spm"))


@pytest.fixture(scope="module")
def model_path(spm_model, tmp_path_factory):
    """arch -> path of its tiny Q4_K_M-like model (written once per module)."""
    out = tmp_path_factory.mktemp("models")
    cache = {}

    def path(arch, **overrides):
        key = (arch, tuple(sorted(overrides.items())))
        if key not in cache:
            kw = dict(SHAPE, **ARCHS[arch])
            kw.update(overrides)
            name = arch + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
            cache[key] = synthetic.write_model(str(out / f"{name}.gguf"), spm_model, arch=arch,
                                               weight_type="q4_k_m", **kw)
        return cache[key]
    return path


def logits(path, backend, n_ctx=32, step=False):
    """Logits of every PROMPT position: in one batch, or one token at a time."""
    model = Model(GGUFFile.open(path), backend, n_ctx=n_ctx)
    if step:
        rows = [np.array(model.forward([t], i, last_only=False)) for i, t in enumerate(PROMPT)]
        return np.concatenate(rows)
    return np.array(model.forward(PROMPT, 0, last_only=False))


def agreement_error(got, ref):
    """(largest difference / largest |logit|, mean difference / mean |logit|).

    Both backends quantize activations to int8 and round q and the KV cache to f16
    the same way, so they differ only by float32 summation order (~3e-7 of the
    largest logit) until such a difference carries a value across a rounding
    boundary. From there that row differs by rounding noise: one int8 step (1/127 of
    a block's largest value) or one f16 step (2^-11) here and there, which the next
    layers carry. Measured over 4 seeds and the three x86 variants: worst 0.030,
    mean 0.019 (7-layer Gemma), and ~3e-7 when no boundary is crossed. Errors of the
    kind this test is for are far above that: the wrong rope layout gives a mean of
    0.31..0.49, dropping the sliding window 0.45..0.64, a broken dot product more.
    (Model-level formulas are shared by both backends; llama.cpp's perplexity and
    greedy text check those.)
    """
    diff = np.abs(got - ref)
    return diff.max() / np.abs(ref).max(), diff.mean() / np.abs(ref).mean()


def assert_agrees(got, ref, what):
    worst, mean = agreement_error(got, ref)
    assert worst < 0.1 and mean < 0.05, (what, worst, mean)


def test_supported_architectures_are_the_tested_ones():
    assert sorted(SUPPORTED_ARCHITECTURES) == sorted(ARCHS)


@pytest.mark.parametrize("variant", usable_variants())
@pytest.mark.parametrize("arch", list(ARCHS))
def test_c_backend_agrees_with_oracle(arch, variant, model_path):
    path = model_path(arch)
    ref = logits(path, NumpyBackend())
    assert np.isfinite(ref).all() and ref.std() > 0.5   # not a degenerate model
    c = CBackend(n_threads=2, variant=variant)
    assert_agrees(logits(path, c), ref, "batch")
    assert_agrees(logits(path, c, step=True), ref, "token by token")


def test_oracle_batch_equals_token_by_token(model_path):
    for arch in ARCHS:
        path = model_path(arch)
        ref = logits(path, NumpyBackend())
        assert_agrees(logits(path, NumpyBackend(), step=True), ref, arch)


def test_sliding_window_masks_only_positions_past_it(model_path):
    """Rows before the window fills match the model without one; later rows differ."""
    for arch in ("mistral", "gemma3", "llama"):
        windowed = logits(model_path(arch, window=WINDOW), NumpyBackend())
        full = logits(model_path(arch, window=0), NumpyBackend())
        np.testing.assert_array_equal(windowed[:WINDOW], full[:WINDOW])
        assert np.abs(windowed[WINDOW:] - full[WINDOW:]).max(axis=1).min() > 1e-3, arch


def test_phi3_window_is_ignored_like_llama_cpp(model_path):
    np.testing.assert_array_equal(logits(model_path("phi3", window=WINDOW), NumpyBackend()),
                                  logits(model_path("phi3"), NumpyBackend()))


def test_phi3_fused_matrices_split_by_columns(model_path):
    """attn_qkv is q|k|v and ffn_up is gate|up: the same values written as separate
    tensors give the same logits."""
    fused = logits(model_path("phi3"), NumpyBackend())
    split = logits(model_path("phi3", fused=False), NumpyBackend())
    np.testing.assert_array_equal(fused, split)
    c = CBackend(n_threads=2)
    np.testing.assert_array_equal(logits(model_path("phi3"), c),
                                  logits(model_path("phi3", fused=False), c))


def test_phi3_long_rope_factors_follow_the_context_size(model_path):
    """Original context 64: -c 64 uses the short factors, -c 128 the long ones (llama.cpp
    picks by context size, so position 0 is the same and later ones differ)."""
    path = model_path("phi3")
    short, long_ = logits(path, NumpyBackend(), n_ctx=64), logits(path, NumpyBackend(), n_ctx=128)
    np.testing.assert_array_equal(short[0], long_[0])
    assert np.abs(short[2:] - long_[2:]).max(axis=1).min() > 1e-3
    c = CBackend(n_threads=2)
    for n_ctx, ref in ((64, short), (128, long_)):
        assert_agrees(logits(path, c, n_ctx=n_ctx), ref, n_ctx)


def test_rope_attention_factor_scales_rotated_dims():
    from runtime.rope import RopeParams
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    plain, scaled = RopeParams(8, neox=True), RopeParams(8, neox=True, attn_factor=1.5)
    a = NumpyBackend().rope(x.copy(), range(5, 8), 2, 8, plain)
    b = NumpyBackend().rope(x.copy(), range(5, 8), 2, 8, scaled)
    np.testing.assert_allclose(b, a * np.float32(1.5), rtol=1e-6, atol=1e-5)
    c = CBackend(n_threads=1)
    xc = c.tensor(3, 16, x.reshape(-1).tolist())
    np.testing.assert_allclose(np.array(c.rope(xc, range(5, 8), 2, 8, scaled)), b, rtol=1e-6, atol=1e-5)


def test_take_cols_in_both_backends():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(NumpyBackend().take_cols(x, 2, 5), x[:, 2:5])
    c = CBackend(n_threads=1)
    xc = c.tensor(4, 6, x.reshape(-1).tolist())
    np.testing.assert_array_equal(np.array(c.take_cols(xc, 2, 5)), x[:, 2:5])
    np.testing.assert_array_equal(np.array(c.take_cols(c.take_rows(xc, 1, 2), 1, 4)), x[1:2, 1:4])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_cli_generates(arch, model_path):
    r = run_cli("-m", model_path(arch), "-p", "The GNU General Public License", "-n", "8",
                "--temp", "0", "--backend", "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "Traceback" not in r.stderr


# ------------------------------------------------------------------ Gemma 3 270M

GEMMA3_LLAMA_CPP_PPL = 20.3576   # llama-perplexity -c 128, first 20000 bytes of GPL-3


@pytest.mark.skipif(not os.path.exists(GPL), reason="needs /usr/share/common-licenses/GPL-3")
def test_gemma3_perplexity_within_half_percent_of_llama_cpp(tmp_path):
    src = tmp_path / "gpl.txt"
    src.write_bytes(open(GPL, "rb").read()[:20000])
    r = run_cli("-m", gemma3(), "--perplexity", "-f", str(src), "-c", "128")
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"PPL = (\d+\.\d{4}) \+/- (\d+\.\d{4})\n", r.stdout)
    assert m, r.stdout
    ppl = float(m.group(1))
    assert abs(ppl - GEMMA3_LLAMA_CPP_PPL) / GEMMA3_LLAMA_CPP_PPL < 0.005, ppl


def test_gemma3_knows_the_capital_of_france():
    """This GGUF is the base model (no chat template; tests/test_first_run.py checks how
    it chats): as plain completion it answers the question, then asks it again."""
    r = run_cli("-m", gemma3(), "-p", "What is the capital of France?", "-n", "16",
                "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout


@pytest.mark.parametrize("arch,backend", [("phi3", "c"), ("gemma3", "c"), ("mistral", "c"),
                                          ("qwen3", "c"), ("gemma3", "numpy")])
def test_batched_decode_step_matches_single_sequences(arch, backend, model_path):
    """The server's batched step (forward_batch: each row's own position, cache and
    window) matches each sequence decoded alone, through fused splits too."""
    b = CBackend(n_threads=2) if backend == "c" else NumpyBackend()
    model = Model(GGUFFile.open(model_path(arch)), b, n_ctx=32)
    twins = [model.with_own_cache() for _ in range(2)]
    prompts = [PROMPT[:6], PROMPT[2:9]]
    for twin, p in zip(twins, prompts):
        twin.forward(p[:-1], 0)
    batched = np.array(model.forward_batch([p[-1] for p in prompts],
                                           [len(p) - 1 for p in prompts],
                                           [t.cache for t in twins]))
    for r, p in enumerate(prompts):
        # the same path the twin took: the prompt less its last token, then one step
        alone = Model(GGUFFile.open(model_path(arch)), b, n_ctx=32)
        alone.forward(p[:-1], 0)
        single = np.array(alone.forward([p[-1]], len(p) - 1))
        assert_agrees(batched[r:r + 1], single, (arch, r))
