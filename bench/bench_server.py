"""Aggregate generation speed of `--server` with 1, 2 and 4 concurrent streams.

Starts the server on loopback with 4 slots, warms every slot's KV cache with the
prompt (so the runs measure generation, not prefill), then runs K simultaneous
/completion requests of N tokens each (ignore_eos, so every stream is N tokens) and
reports total tokens / wall time. Parallel slots share each decode step's pass over
the weights (Model.forward_batch), so the aggregate should grow with K.

    python bench/bench_server.py [--tokens 32] [--streams 1,2,4] [--rounds 3] [--backend auto]
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.models import smollm2  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

PROMPT = "Once upon a time, in a small village by the sea,"


def run_streams(server, k, n_tokens):
    results, errors = [], []

    def one(i):
        status, r = server.post("/completion", {"prompt": PROMPT, "n_predict": n_tokens,
                                                "temperature": 0.8, "seed": i,
                                                "ignore_eos": True}, timeout=1200)
        if status != 200:
            errors.append(r)
        else:
            results.append(r)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"requests failed: {errors}")
    tokens = sum(r["tokens_predicted"] for r in results)
    per_stream = [r["timings"]["predicted_per_second"] for r in results]
    return tokens, wall, per_stream


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32, help="tokens per stream")
    ap.add_argument("--streams", default="1,2,4", help="concurrency levels")
    ap.add_argument("--backend", default="auto", choices=("auto", "c", "numpy"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per level; the median is reported (the host's load varies)")
    args = ap.parse_args()
    levels = [int(x) for x in args.streams.split(",")]
    flags = ["-c", "256", "-np", str(max(levels)), "--backend", args.backend]
    if args.threads:
        flags += ["-t", str(args.threads)]
    server = ServerProcess(smollm2(), *flags)
    try:
        # Warm each slot: it then holds the prompt, and later requests reuse it.
        run_streams(server, max(levels), 2)
        base = None
        print(f"SmolLM2-135M Q4_1, backend {args.backend}, {args.tokens} tokens per stream")
        print(f"{'streams':>7} {'tokens':>7} {'wall s':>8} {'aggregate t/s':>14} "
              f"{'per stream t/s':>15} {'speedup':>8}")
        for k in levels:
            runs = sorted((run_streams(server, k, args.tokens) for _ in range(args.rounds)),
                          key=lambda r: r[0] / r[1])
            tokens, wall, per_stream = runs[len(runs) // 2]
            rate = tokens / wall
            base = base or rate
            print(f"{k:>7} {tokens:>7} {wall:>8.2f} {rate:>14.2f} "
                  f"{sum(per_stream) / len(per_stream):>15.2f} {rate / base:>7.2f}x", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
