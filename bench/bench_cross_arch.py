"""`--bench` beside llama.cpp's llama-bench on aarch64 and riscv64, both under qemu-user.

    python bench/bench_cross_arch.py [--arch aarch64,riscv64] [-p 128] [-n 32] [--reps 2]
        [-m MODEL.gguf] [--root OTHER_CHECKOUT] [--save FILE.json]

Ours is `python -m runtime --bench` run by the foreign Python of the sysroots in
~/.cache/llamazip/sysroots (scripts/sysroots.sh) under qemu; llama.cpp's is its
llama-bench cross-built for the same architecture (static; see BENCHMARKS.md for the
build), under the same qemu CPU: aarch64 `-cpu max` (dotprod, i8mm), riscv64 RVV 1.0
at `--vlen` bits. One thread each.

What is compared is emulated run time, measured as the CPU time (user + sys, from
wait4) the qemu process spends per repetition of one test: each program runs each
test twice, with `-r 1` and with `-r 1+REPS`, and the difference over REPS is the
cost of one repetition, free of start-up, model loading and warm-up. CPU time, not
wall time, so that other work on a shared machine inflates it little. The rounds
alternate the two programs; the table has the median per repetition of each side
and the ratio (llama.cpp's time over ours: above 1, ours is faster under emulation).
Emulated time is a proxy until real boards are available: qemu charges every
instruction about alike, so it counts work, not the target's caches or pipelines.
`--before OTHER_CHECKOUT` adds that checkout's runtime and kernels as a third engine
("before", e.g. a worktree of main, built with `python kernels/build.py`): a
before/after of kernel changes in the same sitting.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "llamazip")
SYSROOTS = os.path.join(CACHE, "sysroots")
MODEL = os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_1.gguf")
PEER = "/work/peer/cross-{arch}/bin/llama-bench"
PYTHONS = {"aarch64": "python3.11", "riscv64": "python3.13"}


def qemu_argv(arch, args):
    if arch == "aarch64":
        return ["qemu-aarch64", "-cpu", args.aarch64_cpu]
    return ["qemu-riscv64", "-cpu", f"rv64,v=true,vext_spec=v1.0,vlen={args.vlen}"]


def cpu_seconds(argv, cwd):
    """Run argv; return (user+sys seconds of it and its children, stdout)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.chdir(cwd)
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        for chunk in iter(lambda: f.read(65536), b""):
            chunks.append(chunk)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(argv)}")
    return usage.ru_utime + usage.ru_stime, b"".join(chunks).decode()


def ours_argv(arch, args, test, reps):
    root = os.path.join(SYSROOTS, arch)
    p, n = test
    return qemu_argv(arch, args) + ["-L", root, os.path.join(root, "usr/bin", PYTHONS[arch]),
                                    "-m", "runtime", "-m", args.model, "--bench", "--json",
                                    "-p", str(p), "-n", str(n), "-r", str(reps), "-t", "1"]


def theirs_argv(arch, args, test, reps):
    p, n = test
    return qemu_argv(arch, args) + [args.llama_bench.format(arch=arch), "-m", args.model,
                                    "-o", "json", "-p", str(p), "-n", str(n), "-r", str(reps),
                                    "-t", "1"]


def per_rep(make_argv, arch, args, test, cwd):
    """CPU seconds of one repetition of `test`, and the program's own t/s (wall)."""
    one, _ = cpu_seconds(make_argv(arch, args, test, 1), cwd)
    more, out = cpu_seconds(make_argv(arch, args, test, 1 + args.reps), cwd)
    if more <= one:
        sys.exit(f"{arch} {test}: {1 + args.reps} repetitions took no longer than 1 "
                 f"({more:.2f} s vs {one:.2f} s); raise --reps or the token counts")
    rows = [t for t in json.loads(out) if (t["n_prompt"], t["n_gen"]) == test]
    return (more - one) / args.reps, rows[0]["avg_ts"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="aarch64,riscv64")
    ap.add_argument("-m", "--model", default=MODEL)
    ap.add_argument("-p", type=int, default=128, help="prompt tokens (0: no prompt test)")
    ap.add_argument("-n", type=int, default=32, help="generated tokens (0: no generation test)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions measured per run")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--engines", default="ours,llama.cpp", help="of ours, llama.cpp, before")
    ap.add_argument("--before", metavar="CHECKOUT", help="another checkout, run as engine 'before'")
    ap.add_argument("--llama-bench", default=PEER, help="path, {arch} filled in")
    ap.add_argument("--aarch64-cpu", default="max")
    ap.add_argument("--vlen", type=int, default=256)
    ap.add_argument("--save", metavar="FILE.json")
    args = ap.parse_args()
    engines = args.engines.split(",")
    if args.before and "before" not in engines:
        engines.insert(0, "before")
    if "before" in engines and not args.before:
        sys.exit("engine 'before' needs --before CHECKOUT")
    tests = [t for t in ((args.p, 0), (0, args.n)) if any(t)]
    results = []
    for arch in args.arch.split(","):
        if "ours" in engines and not os.path.exists(os.path.join(SYSROOTS, arch, "usr/bin", PYTHONS[arch])):
            sys.exit(f"no {arch} sysroot in {SYSROOTS}: run scripts/sysroots.sh")
        if "llama.cpp" in engines and not os.access(args.llama_bench.format(arch=arch), os.X_OK):
            sys.exit(f"no llama-bench at {args.llama_bench.format(arch=arch)}: see BENCHMARKS.md")
        for test in tests:
            runs = {e: [] for e in engines}
            for r in range(args.rounds):
                for e in engines:
                    make = theirs_argv if e == "llama.cpp" else ours_argv
                    runs[e].append(per_rep(make, arch, args, test, args.before if e == "before" else ROOT))
                    print(f"{arch} {test} {e} round {r + 1}: {runs[e][-1][0]:.2f} s/rep",
                          file=sys.stderr, flush=True)
            results.append({"arch": arch, "test": f"pp{test[0]}" if test[0] else f"tg{test[1]}",
                            "tokens": test[0] or test[1], "before": args.before,
                            "cpu_s": {e: [v[0] for v in runs[e]] for e in engines},
                            "wall_ts": {e: [v[1] for v in runs[e]] for e in engines}})
    if args.save:
        with open(args.save, "w") as f:
            json.dump(results, f, indent=1)
    cols = " | ".join(f"{e} CPU s (t/s)" for e in engines)
    ratios = [e for e in engines if e != "llama.cpp"] if "llama.cpp" in engines else []
    print(f"| arch | test | {cols} |" + "".join(f" llama.cpp / {e} |" for e in ratios))
    print("| --- | --- |" + " ---: |" * (len(engines) + len(ratios)))
    for res in results:
        med = {e: statistics.median(res["cpu_s"][e]) for e in engines}
        cells = " | ".join(f"{med[e]:.2f} ({res['tokens'] / med[e]:.2f})" for e in engines)
        line = f"| {res['arch']} | {res['test']} | {cells} |"
        line += "".join(f" {med['llama.cpp'] / med[e]:.2f}x |" for e in ratios)
        print(line, flush=True)


if __name__ == "__main__":
    main()
