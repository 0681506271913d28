"""Bundle figures: start-to-first-token and memory of the SmolLM2 bundle.

    python bench/bench_bundle.py [--runs 5] [--native]

Builds the portable (and with --native the PyInstaller) bundle of SmolLM2-135M Q4_1
into a temp folder, then for each it starts `BUNDLE -p PROMPT -n 16 --temp 0` several
times and reports the median time from the start of the process to the first byte
of output (the first generated token), next to the bare GGUF run through
`python -m runtime` for reference. Memory: peak RssAnon and RssFile from
/proc/PID/status, sampled every 10 ms during a run.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.procfs import status_fields  # noqa: E402

PROMPT = "Once upon a time,"


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def first_token_seconds(cmd):
    """Seconds from spawning cmd to its first byte on stdout; also peak memory."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - start
    peak = {"RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        # The native launcher's bootloader runs the program in a child process.
        for pid in [proc.pid] + _children(proc.pid):
            for key, value in status_fields(pid, peak).items():
                peak[key] = max(peak[key], value)
        time.sleep(0.01)
    proc.stdout.read()
    proc.wait()
    assert first, f"no output from {cmd}"
    return elapsed, peak


def measure(label, cmd, runs):
    times, peaks = [], []
    for _ in range(runs):
        t, peak = first_token_seconds(cmd)
        times.append(t)
        peaks.append(peak)
    anon = max(p["RssAnon"] for p in peaks) / 2**20
    file_ = max(p["RssFile"] for p in peaks) / 2**20
    print(f"{label:<28} first token {statistics.median(times):6.2f} s (median of {runs}, "
          f"min {min(times):.2f})   peak RssAnon {anon:5.0f} MiB  RssFile {file_:5.0f} MiB")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--native", action="store_true", help="also the PyInstaller bundle")
    args = p.parse_args()
    from bundler.demo import demo_model
    model = demo_model()
    gen = ["-p", PROMPT, "-n", "16", "--temp", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        kinds = ["portable"] + (["native"] if args.native else [])
        bundles = {}
        for kind in kinds:
            out = os.path.join(tmp, f"smol-{kind}.llamafile")
            subprocess.run([sys.executable, "build.py", "--model", model, "-o", out,
                            "--launcher", kind], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
            bundles[kind] = out
        print(f"model {os.path.basename(model)} ({os.path.getsize(model) / 2**20:.0f} MiB), "
              f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}")
        measure("bare: python -m runtime", [sys.executable, "-m", "runtime", "-m", model] + gen,
                args.runs)
        for kind, out in bundles.items():
            size = os.path.getsize(out) / 2**20
            measure(f"bundle {kind} ({size:.0f} MiB)", [out] + gen, args.runs)


if __name__ == "__main__":
    main()
