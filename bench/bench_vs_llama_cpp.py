"""Our engine beside llama.cpp on the same GGUF, same threads, alternating runs.

    python bench/bench_vs_llama_cpp.py [-t 2] [-r 3] [MODEL.gguf ...]

Prints prompt (pp128) and generation (tg64) tokens/s for both and the ratio, then
start-up (exec -> first generated token) and peak RSS with -c 512 for both.
llama.cpp comes from PyPI's llama-cpp-python (`pip install llama-cpp-python` builds
it from source, about 10 minutes on 2 cores); without it only our figures print.
Defaults to SmolLM2 Q4_1, its Q8_0 requantization and, when llama-cpp-python is
installed, a Q4_K_M made from that Q8_0 by llama.cpp's own quantizer (requantizing, so
llama.cpp picks its usual Q4_K_M type mix: on SmolLM2's 576-wide rows most tensors
fall back to Q5_0). Start-up and peak RSS are measured on the first model.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def ours(model, threads, reps, n_prompt=128, n_gen=64):
    out = subprocess.run([sys.executable, "-m", "runtime", "-m", model, "--bench", "--json",
                          "-p", str(n_prompt), "-n", str(n_gen), "-r", str(reps),
                          "-t", str(threads)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    tests = json.loads(out)
    return {("pp" if t["n_prompt"] else "tg"): t["avg_ts"] for t in tests}


_LLAMA_SCRIPT = r"""
import json, random, sys, time
import llama_cpp
model, threads, reps, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lm = llama_cpp.Llama(model_path=model, n_ctx=512, n_batch=512, n_threads=threads,
                     n_threads_batch=threads, verbose=False)
rng = random.Random(0)
vocab = lm.n_vocab()
prompt = [rng.randrange(vocab) for _ in range(n_prompt)]
def pp():
    lm.reset(); lm._ctx.memory_clear(True) if hasattr(lm._ctx, "memory_clear") else None
    lm.eval(prompt)
def tg():
    lm.reset(); lm._ctx.memory_clear(True) if hasattr(lm._ctx, "memory_clear") else None
    for i in range(n_gen):
        lm.eval([rng.randrange(vocab)])
res = {}
for name, fn, n in (("pp", pp, n_prompt), ("tg", tg, n_gen)):
    fn()
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); rates.append(n / (time.perf_counter() - t0))
    res[name] = sum(rates) / len(rates)
print(json.dumps(res))
"""


_LLAMA_ONE_TOKEN = r"""
import sys
import llama_cpp
lm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=512, n_threads=int(sys.argv[2]), verbose=False)
out = lm.create_completion("Hello", max_tokens=1, temperature=0)
sys.stdout.write(out["choices"][0]["text"] or "-")
"""


def llama_cpp(model, threads, reps, n_prompt=128, n_gen=64):
    r = subprocess.run([sys.executable, "-c", _LLAMA_SCRIPT, model, str(threads), str(reps),
                        str(n_prompt), str(n_gen)], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


_LLAMA_QUANTIZE = r"""
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + sys.argv[3])
params.allow_requantize = True
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),
                                        ctypes.byref(params)))
"""


def quantize_with_llama_cpp(src, out, ftype):
    """Write `out` from `src` with llama.cpp's quantizer; False without llama-cpp-python."""
    tmp = f"{out}.{os.getpid()}.tmp"
    r = subprocess.run([sys.executable, "-c", _LLAMA_QUANTIZE, src, tmp, ftype],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if os.path.exists(tmp):
            os.unlink(tmp)
        return False
    os.replace(tmp, out)
    return True


def first_token_and_rss(cmd):
    """Seconds from exec to the first byte on stdout, and the child's peak RSS (MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.read(1)
    first = time.perf_counter() - t0
    proc.stdout.read()
    # wait4 gives this child's own peak, not the maximum over every child so far
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return first, usage.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per model")
    args = ap.parse_args()
    if not args.models:
        from tests.models import CACHE, smollm2, smollm2_q8_0
        args.models = [smollm2(), smollm2_q8_0()]
        q4_k_m = os.path.join(CACHE, "SmolLM2-135M-Instruct.Q4_K_M.gguf")
        if os.path.exists(q4_k_m) or quantize_with_llama_cpp(args.models[1], q4_k_m, "Q4_K_M"):
            args.models.append(q4_k_m)

    print(f"# {time.strftime('%Y-%m-%d')}, {args.threads} threads, {_cpu_name()}")
    print("| model | test | llamazip t/s | llama.cpp t/s | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for model in args.models:
        ours_runs, ref_runs = [], []
        for _ in range(args.rounds):  # alternate, so both see the same machine state
            ours_runs.append(ours(model, args.threads, args.reps))
            ref = llama_cpp(model, args.threads, args.reps)
            if ref:
                ref_runs.append(ref)
        for test in ("pp", "tg"):
            a = statistics.mean(r[test] for r in ours_runs)
            b = statistics.mean(r[test] for r in ref_runs) if ref_runs else None
            label = "pp128" if test == "pp" else "tg64"
            ratio = f"{a / b:.2f}x" if b else "n/a"
            bs = f"{b:.1f}" if b else "not installed"
            print(f"| {os.path.basename(model)} | {label} | {a:.1f} | {bs} | {ratio} |")

    model = args.models[0]
    cmd = [sys.executable, "-m", "runtime", "-m", model, "-p", "Hello", "-n", "1", "--temp", "0",
           "-c", "512", "-t", str(args.threads)]
    runs = [first_token_and_rss(cmd) for _ in range(3)]
    print(f"\nexec -> first token (python -m runtime, -c 512): "
          f"{min(r[0] for r in runs):.3f} s; peak RSS {max(r[1] for r in runs):.0f} MiB")
    ref_cmd = [sys.executable, "-c", _LLAMA_ONE_TOKEN, model, str(args.threads)]
    ref = first_token_and_rss(ref_cmd)
    if ref[1] > 0:
        print(f"llama.cpp (llama-cpp-python, -c 512): exec -> first token {ref[0]:.3f} s "
              f"(includes importing the binding); peak RSS {ref[1]:.0f} MiB")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
