"""`--bench`: llama-bench's measure on our engine.

The tests are llama-bench's, with its flags: prompt processing `-p N` (N tokens in
batches of `-b`), text generation `-n N` (N tokens one at a time), both together
`-pg P,N` (a prompt of P then N generated; t/s over all P + N), each at a depth
`-d D` (D tokens already in the cache, put there untimed before the test). Each flag
takes a comma list and the tests run for every combination, each `reps` times after
one warm-up run. Only the forward passes are timed: no tokenization, no sampling
(tokens are random ids, as llama-bench uses). The table has llama-bench's columns;
the JSON form carries its `-o json` field names so tools written for it read ours.
"""

import json
import math
import random
import sys
import time


# A cache "at depth D" holds D positions; a test writes positions D.. on, so what a
# depth fill put below D stays valid for every repetition at that depth.

def _pp(model, tokens, batch, depth):
    for start in range(0, len(tokens), batch):
        model.forward(tokens[start:start + batch], depth + start)


def _tg(model, first, n_gen, vocab, depth):
    rng = random.Random(1)
    token = first
    for i in range(n_gen):
        model.forward([token], depth + i)
        token = rng.randrange(vocab)


def _stats(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def plan(prompts=(128,), gens=(64,), pgs=(), depths=(0,), batches=(512,)):
    """The tests as (n_prompt, n_gen, depth, batch), in llama-bench's order."""
    tests = []
    for batch in batches:
        for depth in depths:
            tests += [(p, 0, depth, batch) for p in prompts if p > 0]
            tests += [(0, n, depth, batch) for n in gens if n > 0]
            tests += [(p, n, depth, batch) for p, n in pgs]
    return tests


def context_needed(tests):
    return max([d + p + n for p, n, d, _ in tests] + [1])


def test_name(n_prompt, n_gen, depth):
    name = (f"pp{n_prompt}+tg{n_gen}" if n_prompt and n_gen
            else f"pp{n_prompt}" if n_prompt else f"tg{n_gen}")
    return name + (f" @ d{depth}" if depth else "")


def describe_size(n_bytes):
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def run_bench(model, tests, reps=5, n_threads=1, as_json=False, out=sys.stdout,
              model_name="model", model_size=0, n_params=0):
    cfg = model.config
    vocab = cfg.vocab_size
    rng = random.Random(0)
    results = []
    filled = None   # (depth) the cache holds now
    for n_p, n_g, depth, batch in tests:
        if depth and filled != depth:
            fill = [rng.randrange(vocab) for _ in range(depth)]
            _pp(model, fill, batch, 0)
            filled = depth
        prompt = [rng.randrange(vocab) for _ in range(n_p)]
        first = rng.randrange(vocab)

        def once():
            if n_p:
                _pp(model, prompt, batch, depth)
            if n_g:
                _tg(model, first, n_g, vocab, depth + n_p)

        once()  # warm-up: page in the weights, spin up the thread pool
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            once()
            times.append(time.perf_counter() - t0)
        rates = [(n_p + n_g) / t for t in times]
        avg_ts, stddev_ts = _stats(rates)
        avg_ns, stddev_ns = _stats([t * 1e9 for t in times])
        results.append({
            "model_filename": model_name, "model_type": cfg.arch,
            "model_size": model_size, "model_n_params": n_params,
            "backends": model.backend.name, "n_threads": n_threads, "n_batch": batch,
            "n_prompt": n_p, "n_gen": n_g, "n_depth": depth,
            "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "avg_ns": int(avg_ns), "stddev_ns": int(stddev_ns),
            "avg_ts": avg_ts, "stddev_ts": stddev_ts,
            "samples_ns": [int(t * 1e9) for t in times], "samples_ts": rates,
        })
        if not as_json:
            if len(results) == 1:
                _table_head(out, tests)
            _table_row(out, results[-1], tests)
            out.flush()
    if as_json:
        print(json.dumps(results, indent=2), file=out)
    return results


def _show_batch(tests):
    # llama-bench shows n_batch only when it is not its default
    return any(b != 512 for _, _, _, b in tests)


def _table_head(out, tests):
    cols = ["model", "size", "params", "backend", "threads"] + \
        (["n_batch"] if _show_batch(tests) else []) + ["test", "t/s"]
    print("| " + " | ".join(cols) + " |", file=out)
    print("| " + " | ".join("---" if c in ("model", "backend") else "---:" for c in cols) + " |",
          file=out)


def _table_row(out, r, tests):
    cells = [r["model_filename"], describe_size(r["model_size"]),
             f"{r['model_n_params'] / 1e9:.2f} B", r["backends"], str(r["n_threads"])]
    if _show_batch(tests):
        cells.append(str(r["n_batch"]))
    cells += [test_name(r["n_prompt"], r["n_gen"], r["n_depth"]),
              f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f}"]
    print("| " + " | ".join(cells) + " |", file=out)
