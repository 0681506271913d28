"""Sampling: llama.cpp's chain (penalties, top-k, top-p, min-p, temperature), seeds,
and the backends' logits rows, which must pick the same candidates as a plain list."""

import math
import random

import numpy as np
import pytest

from runtime.backend_numpy import NumpyBackend
from runtime.sampling import ListLogits, Sampler, SamplingParams, find_stop, partial_stop_suffix


def _logits(n=5000, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(0, 3) for _ in range(n)]


def test_greedy_is_argmax_and_ties_go_to_the_lower_id():
    values = _logits()
    best = max(range(len(values)), key=values.__getitem__)
    assert Sampler(SamplingParams(temperature=0)).sample(values) == best
    tied = [0.0, 5.0, 1.0, 5.0]
    assert Sampler(SamplingParams(temperature=0)).sample(tied) == 1


def test_same_seed_same_tokens_other_seed_other_tokens():
    values = _logits()
    def draw(seed):
        s = Sampler(SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        return [s.sample(values) for _ in range(50)]
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_top_p_min_p_bound_the_candidates():
    values = _logits()
    order = sorted(range(len(values)), key=lambda i: -values[i])
    s = Sampler(SamplingParams(temperature=1.0, top_k=5, top_p=1.0, min_p=0.0, seed=1))
    assert {s.sample(values) for _ in range(300)} <= set(order[:5])
    # min-p: only tokens with p >= 0.5 * p_max survive
    allowed = {i for i in range(len(values)) if math.exp(values[i] - values[order[0]]) >= 0.5}
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5, seed=2))
    assert {s.sample(values) for _ in range(300)} <= allowed
    # top-p: the smallest prefix of the ranking whose mass reaches p
    probs = np.exp(np.array(values) - max(values))
    probs /= probs.sum()
    cum = np.cumsum(probs[order])
    keep = set(order[:int(np.searchsorted(cum, 0.6)) + 1])
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.6, min_p=0.0, seed=3))
    assert {s.sample(values) for _ in range(300)} <= keep


def test_penalties_push_repeated_tokens_down():
    values = [0.0] * 10
    values[3], values[4] = 2.0, 1.9
    greedy = SamplingParams(temperature=0, repeat_penalty=1.5)
    assert Sampler(SamplingParams(temperature=0)).sample(values, [3]) == 3
    assert Sampler(greedy).sample(values, [3]) == 4          # 2.0 / 1.5 < 1.9
    assert Sampler(greedy).sample(values, [9] * 70 + [3]) == 4
    far = SamplingParams(temperature=0, repeat_penalty=1.5, repeat_last_n=2)
    assert Sampler(far).sample(values, [3, 1, 2]) == 3        # 3 is outside the window
    freq = SamplingParams(temperature=0, frequency_penalty=0.05)
    assert Sampler(freq).sample(values, [3, 3, 3]) == 4       # 2.0 - 3 * 0.05 < 1.9
    # a negative presence penalty lifts a token from outside the raw top-k
    lift = SamplingParams(temperature=0, top_k=1, presence_penalty=-5.0)
    assert Sampler(lift).sample(values, [7]) == 7


def _c_logits(x):
    """The same row as the C backend holds it (None where the kernels don't load)."""
    import ctypes
    try:
        from runtime.backend_c import CBackend, Tensor
        backend = CBackend(n_threads=1)
    except (ImportError, OSError):
        return None
    t = Tensor(1, x.shape[1])
    ctypes.memmove(t.addr, x.ctypes.data, x.nbytes)
    return backend.logits_row(t, 0)


def test_backend_logits_rows_rank_and_sample_like_a_list():
    values = _logits(3000, seed=4)
    values[10] = values[20] = max(values) + 1.0  # a tie at the top
    x = np.array([values], dtype=np.float32)
    rows = [ListLogits([float(v) for v in x[0]]), NumpyBackend().logits_row(x, 0)]
    c_row = _c_logits(x)
    if c_row is not None:
        rows.append(c_row)
    tops = [r.top(40) for r in rows]
    assert tops[0][0][1] == 10 and tops[0][1][1] == 20
    for other in tops[1:]:
        assert other == tops[0]

    def draws(row):
        s = Sampler(SamplingParams(temperature=0.9, seed=11))
        return [s.sample(row, [10, 10, 5]) for _ in range(20)]
    expected = draws(rows[0])
    assert len(set(expected)) > 1
    for r in rows[1:]:
        assert draws(r) == expected


@pytest.mark.parametrize("text,stops,cut", [("hello world", ["wor"], 6), ("abc", ["x"], -1),
                                            ("a<|end|>b<|x", ["<|x", "<|end|>"], 1)])
def test_find_stop(text, stops, cut):
    assert find_stop(text, stops) == cut


def test_partial_stop_suffix_holds_back_a_possible_stop():
    assert partial_stop_suffix("hello <|e", ["<|end|>"]) == 3
    assert partial_stop_suffix("hello", ["<|end|>"]) == 0
