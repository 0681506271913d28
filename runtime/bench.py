"""`--bench`: llama-bench's measure on our engine.

Two tests, each repeated `reps` times after one warm-up run: prompt processing
(pp: n_prompt tokens in batches, from an empty cache) and text generation (tg:
n_gen tokens one at a time, from an empty cache). Only the forward passes are
timed: no tokenization, no sampling (tokens are random ids, as llama-bench uses).
The JSON form carries llama-bench's field names so tools written for it read ours.
"""

import json
import math
import random
import sys
import time


# Starting again at position 0 is an empty cache: attention reads only positions
# up to the current one, so old entries are overwritten before they are seen.

def _pp(model, tokens, batch):
    for start in range(0, len(tokens), batch):
        model.forward(tokens[start:start + batch], start)


def _tg(model, first, n_gen, vocab):
    rng = random.Random(1)
    token = first
    for pos in range(n_gen):
        model.forward([token], pos)
        token = rng.randrange(vocab)


def _stats(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def run_bench(model, n_prompt=128, n_gen=64, reps=5, batch=512, n_threads=1, as_json=False,
              out=sys.stdout, model_name="model"):
    cfg = model.config
    rng = random.Random(0)
    tests = []
    if n_prompt > 0:
        tokens = [rng.randrange(cfg.vocab_size) for _ in range(n_prompt)]
        tests.append(("pp", n_prompt, 0, lambda: _pp(model, tokens, batch)))
    if n_gen > 0:
        first = rng.randrange(cfg.vocab_size)
        tests.append(("tg", 0, n_gen, lambda: _tg(model, first, n_gen, cfg.vocab_size)))
    if max(n_prompt, n_gen) > model.n_ctx:
        from runtime.errors import UserError
        raise UserError(f"--bench needs a context of {max(n_prompt, n_gen)} tokens; raise -c")

    results = []
    for kind, n_p, n_g, fn in tests:
        fn()  # warm-up: page in the weights, spin up the thread pool
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        n_tokens = n_p + n_g
        rates = [n_tokens / t for t in times]
        avg_ts, stddev_ts = _stats(rates)
        avg_ns, stddev_ns = _stats([t * 1e9 for t in times])
        results.append({
            "model_filename": model_name, "model_type": cfg.arch,
            "backends": model.backend.name, "n_threads": n_threads, "n_batch": batch,
            "n_prompt": n_p, "n_gen": n_g, "test_time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                     time.gmtime()),
            "avg_ns": int(avg_ns), "stddev_ns": int(stddev_ns),
            "avg_ts": avg_ts, "stddev_ts": stddev_ts,
            "samples_ns": [int(t * 1e9) for t in times], "samples_ts": rates,
        })
    if as_json:
        print(json.dumps(results, indent=2), file=out)
    else:
        print("| model | backend | threads | test | t/s |", file=out)
        print("| --- | --- | ---: | ---: | ---: |", file=out)
        for r in results:
            test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
            print(f"| {model_name} | {r['backends']} | {n_threads} | {test} | "
                  f"{r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |", file=out)
    return results
