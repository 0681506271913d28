"""`--bench` beside llama.cpp's native llama-bench: same file, same flags, alternating.

    python bench/bench_vs_llama_bench.py -m MODEL.gguf [-m ...] [--rounds 3] -- -p 512 -n 128 -t 2
    python bench/bench_vs_llama_bench.py --shape tinyllama-1.1b:Q4_0,Q8_0 -- -p 128 -n 32 -d 0,4096

Everything after `--` goes to both programs unchanged (llama-bench's flags: -p, -n,
-pg, -d, -b, -r, -t). Each round runs ours, then llama-bench, on every model, so a
busy host slows both alike; the table reports each side's median over the rounds
and the ratio. `--busy` pins a spinning process on CPU 0 for the whole run (the
one-core-busy measure). `--rss` adds each side's peak RSS (from wait4) per test row.
`--ceiling` also measures the read-bandwidth ceiling (bench/bandwidth.py, the -t
thread count, 1 GiB, 4 streams) once per round between the engines, and gives each
generation row both sides' read rate: the bytes a token reads (every weight but the
token embedding, whose one row per token is negligible, unless the output reuses it)
times tokens/s, and that as a share of the ceiling's median.
Models: paths, or `--shape NAME:TYPE,...` made by bench/shapes.py (cached).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

PEER_BENCH = "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-bench"


def _peak_rss(cmd):
    """Peak RSS (bytes) of a command: wait4 on a child of our own."""
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.chdir(ROOT)
        os.execvp(cmd[0], cmd)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_maxrss * 1024


def key(t):
    # not n_batch: llama-bench's default is 2048 (prompts still go in micro-batches
    # of 512), ours 512; -b given here reaches both
    return (t["n_prompt"], t["n_gen"], t.get("n_depth", 0))


def test_name(k):
    p, n, d = k
    name = f"pp{p}+tg{n}" if p and n else f"pp{p}" if p else f"tg{n}"
    return name + (f" @ d{d}" if d else "")


def ours(model, flags):
    out = subprocess.run([sys.executable, "-m", "runtime", "-m", model, "--bench", "--json",
                          *flags], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"llamazip --bench failed:\n{out.stderr[-2000:]}")
    return {key(t): t["avg_ts"] for t in json.loads(out.stdout)}


def theirs(binary, model, flags):
    out = subprocess.run([binary, "-m", model, "-o", "json", *flags], capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(f"llama-bench failed:\n{out.stderr[-2000:]}")
    return {key(t): t["avg_ts"] for t in json.loads(out.stdout)}


def bytes_per_token(model):
    """Weight bytes one generated token reads."""
    from runtime.gguf import GGUFFile
    g = GGUFFile.open(model)
    tied = "output.weight" not in g.tensors
    return sum(t.nbytes for name, t in g.tensors.items()
               if name != "token_embd.weight" or tied)


def ceiling(threads):
    """Median GB/s of 10 passes over 1 GiB with `threads` threads (bench/bandwidth.py)."""
    import bandwidth
    return bandwidth.measure(bandwidth.compile_bandwidth(), 1024, threads, 4, 10)[1]


def busy_core():
    """A process spinning on CPU 0 until we stop it."""
    return subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])


def main():
    argv = sys.argv[1:]
    flags = []
    if "--" in argv:
        flags = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append", default=[])
    ap.add_argument("--shape", action="append", default=[], help="NAME:TYPE[,TYPE] from bench/shapes.py")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH", PEER_BENCH))
    ap.add_argument("--busy", action="store_true", help="keep CPU 0 busy with a spinning process")
    ap.add_argument("--rss", action="store_true", help="peak RSS of each side (one more run each)")
    ap.add_argument("--ceiling", action="store_true",
                    help="measure the read-bandwidth ceiling each round; GB/s per tg row")
    ap.add_argument("--save", metavar="FILE.json", help="also write every run's figures here")
    args = ap.parse_args(argv)
    models = list(args.model)
    for spec in args.shape:
        import shapes
        name, _, types = spec.partition(":")
        models += shapes.make(name, (types or "Q4_0").split(","), shapes.PEER_QUANTIZE)
    if not models:
        sys.exit("give -m MODEL.gguf or --shape NAME:TYPE")
    if not os.access(args.llama_bench, os.X_OK):
        sys.exit(f"llama-bench not found at {args.llama_bench}; pass --llama-bench PATH")
    spinner = busy_core() if args.busy else None
    try:
        ours_runs = {m: [] for m in models}
        theirs_runs = {m: [] for m in models}
        ceilings = []
        threads = int(flags[flags.index("-t") + 1].split(",")[0]) if "-t" in flags else 1
        for r in range(args.rounds):
            for m in models:
                ours_runs[m].append(ours(m, flags))
                if args.ceiling:
                    ceilings.append(ceiling(threads))
                theirs_runs[m].append(theirs(args.llama_bench, m, flags))
                print(f"round {r + 1}/{args.rounds} {os.path.basename(m)}", file=sys.stderr)
        rss = {}
        if args.rss:
            for m in models:
                rss[m] = (_peak_rss([sys.executable, "-m", "runtime", "-m", m, "--bench", *flags]),
                          _peak_rss([args.llama_bench, "-m", m, *flags]))
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()
    if args.save:
        with open(args.save, "w") as f:
            json.dump({m: {"llamazip": [{test_name(k): v for k, v in run.items()} for run in ours_runs[m]],
                           "llama.cpp": [{test_name(k): v for k, v in run.items()} for run in theirs_runs[m]],
                           "peak_rss": rss.get(m)} for m in models}, f, indent=1)
    if args.ceiling:
        ceiling_gbs = statistics.median(ceilings)
        print(f"read-bandwidth ceiling, {threads} threads: median {ceiling_gbs:.1f} GB/s "
              f"(rounds: {', '.join(f'{c:.1f}' for c in ceilings)}); "
              f"load average {os.getloadavg()[0]:.2f}")
    head = "| model | test | llamazip t/s | llama.cpp t/s | ratio |"
    rule = "| --- | --- | ---: | ---: | ---: |"
    if args.ceiling:
        head += " GB/s llamazip / llama.cpp | of ceiling |"
        rule += " ---: | ---: |"
    if args.rss:
        head += " peak RSS llamazip / llama.cpp |"
        rule += " ---: |"
    print(head)
    print(rule)
    for m in models:
        for k in ours_runs[m][0]:
            a = statistics.median(run[k] for run in ours_runs[m])
            b = statistics.median(run[k] for run in theirs_runs[m] if k in run) \
                if all(k in run for run in theirs_runs[m]) else float("nan")
            line = f"| {os.path.basename(m)} | {test_name(k)} | {a:.2f} | {b:.2f} | {a / b:.2f}x |"
            if args.ceiling:
                if k[0] == 0 and k[2] == 0:     # generation at depth 0: weights dominate
                    gb = bytes_per_token(m) / 1e9
                    line += (f" {a * gb:.1f} / {b * gb:.1f} | {a * gb / ceiling_gbs:.0%} / "
                             f"{b * gb / ceiling_gbs:.0%} |")
                else:
                    line += " | |"
            if args.rss:
                mine, peer = rss[m]
                line += f" {mine / 2**20:.0f} / {peer / 2**20:.0f} MiB ({mine / peer:.2f}x) |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
