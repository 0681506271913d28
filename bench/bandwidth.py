#!/usr/bin/env python3
"""This machine's read-bandwidth ceiling, for comparing matrix x vector kernels to.

    python bench/bandwidth.py [--threads 1,2] [--streams 1,2,4,8] [--mib 1024] [--reps 10]

Compiles bench/bandwidth.c with the compiler the kernels are built with (zig's
clang, `python -m ziglang cc`, for this CPU) into kernels/build/bench/bandwidth and
runs it for each thread count and number of parallel streams per thread. Prints the
best and median GB/s of each; the best over all streams is the ceiling that
BENCHMARKS.md quotes. The buffer (default 1 GiB) is far larger than the last-level
cache, so every pass comes from memory.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from kernels import build as kbuild  # noqa: E402


def compile_bandwidth():
    out = os.path.join(ROOT, "kernels", "build", "bench", "bandwidth")
    src = os.path.join(HERE, "bandwidth.c")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        cmd = kbuild.zig_cc() + ["-O2", "-mcpu=native", "-pthread", src, "-o", out + ".tmp"]
        subprocess.run(cmd, check=True)
        os.replace(out + ".tmp", out)
    return out


def measure(exe, mib, threads, streams, reps):
    out = subprocess.run([exe, str(mib), str(threads), str(streams), str(reps)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    exe = compile_bandwidth()
    print(f"read bandwidth, {args.mib} MiB buffer, best / median of {args.reps} passes; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("threads  streams  best GB/s  median GB/s")
    for t in (int(v) for v in args.threads.split(",")):
        for s in (int(v) for v in args.streams.split(",")):
            best, med = measure(exe, args.mib, t, s, args.reps)
            print(f"{t:7d}  {s:7d}  {best:9.1f}  {med:11.1f}", flush=True)


if __name__ == "__main__":
    main()
