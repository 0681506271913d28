"""One attention call at depth: CPU and wall time of lz_attention_rows for N query
rows over D cached keys (random f16 cache), the kernel of generation at depth.

    python bench/bench_attention.py [-d 4096] [-n 1] [-t 1] [--heads 32 --kv-heads 4 --head-dim 64]

Defaults are TinyLlama-1.1B's shapes; the last column multiplies by its 22 layers.
CPU time (user + sys of this process) is what a busy host inflates least: compare
two trees by running each one's copy of this script alternately.
"""

import argparse
import ctypes
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from runtime import kernels  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-d", "--depth", type=int, default=4096)
    ap.add_argument("-n", "--rows", type=int, default=1, help="query rows (1: generation)")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("-r", "--reps", type=int, default=50)
    args = ap.parse_args()
    lib = kernels.load().lib
    lib.lz_set_threads(args.threads)
    nh, nkv, hd, n = args.heads, args.kv_heads, args.head_dim, args.rows
    kv = nkv * hd
    rng = np.random.default_rng(0)
    kc = rng.standard_normal((args.depth + n, kv)).astype(np.float16)
    vc = rng.standard_normal((args.depth + n, kv)).astype(np.float16)
    q = rng.standard_normal((n, nh * hd)).astype(np.float32)
    k = rng.standard_normal((n, kv)).astype(np.float32)
    v = rng.standard_normal((n, kv)).astype(np.float32)
    out = np.zeros((n, nh * hd), np.float32)
    bases_k = (ctypes.c_void_p * n)(*([kc.ctypes.data] * n))
    bases_v = (ctypes.c_void_p * n)(*([vc.ctypes.data] * n))
    pos = (ctypes.c_int64 * n)(*range(args.depth, args.depth + n))

    def call():
        rc = lib.lz_attention_rows(q.ctypes.data, nh * hd, k.ctypes.data, v.ctypes.data, kv,
                                   bases_k, bases_v, 0, pos, n, nh, nkv, hd, hd ** -0.5, 0,
                                   out.ctypes.data, nh * hd)
        if rc != 0:
            raise SystemExit(f"lz_attention_rows failed ({rc})")

    call()
    wall, cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.reps):
            call()
        wall.append((time.perf_counter() - t0) / args.reps)
        cpu.append((time.process_time() - c0) / args.reps)
    w, c = min(wall), min(cpu)
    print(f"{n} row(s) over {args.depth} keys, {nh}/{nkv} heads of {hd}, {args.threads} "
          f"thread(s): {w * 1e3:.3f} ms wall, {c * 1e3:.3f} ms CPU per call; "
          f"x{args.layers} layers: {w * args.layers * 1e3:.1f} ms wall, "
          f"{c * args.layers * 1e3:.1f} ms CPU", flush=True)


if __name__ == "__main__":
    main()
