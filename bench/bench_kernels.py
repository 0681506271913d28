#!/usr/bin/env python3
"""Kernel throughput: matrix x vector (weight streaming, GB/s) and matrix x matrix (GFLOP/s).

    python bench/bench_kernels.py [--variant avx512] [--threads 1,2] [--types Q4_1,Q8_0]

Matrix x vector is bound by memory: we report the rate at which the weights stream
through (bytes of quantized weights per second) against this machine's own read
rate, measured with a plain streaming read over the same amount of memory on the
same number of threads. The weights are several matrices of 64 MiB in rotation, so
they never sit in the cache. Matrix x matrix (a prompt batch of 128 tokens against a
4096 x 2048 matrix) is bound by arithmetic: we report GFLOP/s (2 flops per weight per
token).

Needs numpy (for making random test weights only) and the built kernels.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from runtime import ggml_types as T  # noqa: E402
from runtime import kernels  # noqa: E402

# Byte offsets of the f16 scales in each block, to be set to sane values after
# filling the block with random bytes (random scales could be inf or NaN).
SCALE_OFFSETS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}
ALL = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
       "F16", "BF16", "F32"]


def random_weights(name, rows, k, rng):
    """Random weights of type `name` as a uint8 array [rows, row_bytes]."""
    tid = getattr(T, name)
    _, block, size = T.TYPES[tid]
    if name == "F32":
        return rng.standard_normal((rows, k), dtype=np.float32).view(np.uint8)
    if name == "F16":
        return rng.standard_normal((rows, k), dtype=np.float32).astype(np.float16).view(np.uint8)
    if name == "BF16":
        f = rng.standard_normal((rows, k), dtype=np.float32)
        return (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, (rows, k // block, size), dtype=np.uint8)
    for off in SCALE_OFFSETS[name]:
        raw[:, :, off:off + 2] = (rng.random((rows, k // block, 1), dtype=np.float32) * 0.01
                                  + 0.001).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def timeit(fn, min_time=0.5, min_reps=5):
    """Best time of several runs: other processes only ever make a run slower."""
    fn()
    best, reps, t0 = float("inf"), 0, time.perf_counter()
    while True:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        reps += 1
        if time.perf_counter() - t0 >= min_time and reps >= min_reps:
            return best


def read_bandwidth(lib, buf, nbytes):
    addr = buf.ctypes.data
    return nbytes / timeit(lambda: lib.lz_stream_read(addr, nbytes)) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", help="kernel variant (default: the best for this CPU)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--types", default=",".join(ALL))
    ap.add_argument("--k", type=int, default=2048, help="row length")
    ap.add_argument("--tokens", type=int, default=128, help="matrix x matrix batch")
    ap.add_argument("--mib", type=int, default=256, help="weights streamed by matrix x vector")
    args = ap.parse_args()

    arch = kernels.machine_arch()
    variant = args.variant or kernels.choose_variant(arch, kernels.detect_features(arch))
    lib = kernels.load_variant(arch, variant).lib
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)
    k = args.k
    total = args.mib << 20

    # On a shared or virtual machine the read rate drifts from minute to minute, so
    # it is measured again right before each matrix x vector figure it is compared to.
    big = np.ones(total, np.uint8)
    bw = {}
    for nt in threads:
        lib.lz_set_threads(nt)
        bw[nt] = read_bandwidth(lib, big, total)
    print(f"kernels {variant} on {arch}; streaming read: "
          + ", ".join(f"{bw[t]:.1f} GB/s ({t} thr)" for t in threads)
          + " (% columns: of the read rate measured just before each figure)", flush=True)
    head = f"{'type':6}" + "".join(f"  GEMV {t}t GB/s (%)" for t in threads) \
        + "".join(f"  GEMM {t}t GFLOP/s" for t in threads)
    print(head)

    x = rng.standard_normal((args.tokens, k), dtype=np.float32)
    for name in args.types.split(","):
        tid = getattr(T, name)
        row_bytes = T.row_bytes(tid, k)
        # matrix x vector: 64 MiB matrices in rotation, `total` bytes in all
        rows = (64 << 20) // row_bytes
        mats = [random_weights(name, rows, k, rng) for _ in range(max(1, total // (64 << 20)))]
        y = np.zeros((args.tokens, max(rows, 4096)), np.float32)
        gemv, pct = {}, {}
        for nt in threads:
            lib.lz_set_threads(nt)
            near = read_bandwidth(lib, big, total)

            def run_gemv():
                for m in mats:
                    lib.lz_matmul(tid, m.ctypes.data, rows, k, x.ctypes.data, k, 1,
                                  y.ctypes.data, rows)
            gemv[nt] = rows * row_bytes * len(mats) / timeit(run_gemv) / 1e9
            pct[nt] = 100 * gemv[nt] / near
        del mats
        # matrix x matrix: 4096 rows, fits the cache; arithmetic bound
        w = random_weights(name, 4096, k, rng)
        gemm = {}
        for nt in threads:
            lib.lz_set_threads(nt)
            n = args.tokens
            dt = timeit(lambda: lib.lz_matmul(tid, w.ctypes.data, 4096, k, x.ctypes.data, k, n,
                                              y.ctypes.data, 4096))
            gemm[nt] = 2.0 * 4096 * k * n / dt / 1e9
        line = f"{name:6}" + "".join(f"  {gemv[t]:7.1f} ({pct[t]:3.0f}%)    " for t in threads)
        line += "".join(f"  {gemm[t]:14.1f}" for t in threads)
        print(line, flush=True)


if __name__ == "__main__":
    main()
