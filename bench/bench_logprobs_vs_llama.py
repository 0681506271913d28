"""Log-probabilities against llama-server's on the same requests: SmolLM2, 20 prompts,
greedy, top-5 (n_probs) at each of 16 generated positions for as long as both servers
follow the same tokens. Prints the mean and largest absolute difference (nats) over
every token id that both top-5 lists hold; the goal is a mean <= 0.05.

    python bench/bench_logprobs_vs_llama.py --peer .../build/bin/llama-server [--threads 1]

Both servers run on loopback ports with the same GGUF file. With --reference, a second
llama-server with flash attention off is compared with the first the same way: how
much llama.cpp differs from itself by rounding alone.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.models import smollm2  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "peer",
                    "llama_cpp_python-0.3.36", "vendor", "llama.cpp", "build", "bin",
                    "llama-server")
PROMPTS = [
    "The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
    "The best way to learn a language is", "In 1969, the first man on the moon",
    "Water boils at a temperature of", "My favourite recipe for pancakes:",
    "The three laws of robotics are", "import numpy as np\n", "Dear Sir or Madam,",
    "The mitochondria is the", "Q: What is 2 + 2?\nA:", "The quick brown fox",
    "Photosynthesis converts", "A haiku about autumn:\n", "The stock market today",
    "To install Python on Linux,", "The largest ocean on Earth is", "Shakespeare wrote",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
]
N_PREDICT = 16
TOP = 5


def post(url, body):
    req = urllib.request.Request(url + "/completion", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def start_peer(binary, model, port, threads, extra=()):
    proc = subprocess.Popen([binary, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                             "-c", "1024", "-np", "1", "-t", str(threads)] + list(extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama-server did not come up")


def probs(url, prompt):
    r = post(url, {"prompt": prompt, "n_predict": N_PREDICT, "n_probs": TOP, "temperature": 0,
                   "cache_prompt": False, "seed": 1})
    return r["completion_probabilities"]


def compare(runs_a, runs_b):
    """(|differences| of shared top-5 ids, positions, |differences| of chosen tokens)."""
    diffs, positions, chosen = [], 0, []
    for a, b in zip(runs_a, runs_b):
        for x, y in zip(a, b):
            positions += 1
            mine = {t["id"]: t["logprob"] for t in x["top_logprobs"]}
            theirs = {t["id"]: t["logprob"] for t in y["top_logprobs"]}
            diffs += [abs(mine[t] - theirs[t]) for t in mine.keys() & theirs.keys()]
            if x["id"] != y["id"]:
                break          # the histories part here: later positions are not comparable
            chosen.append(abs(x["logprob"] - y["logprob"]))
    return diffs, positions, chosen


def report(label, diffs, positions, chosen):
    print(f"{label}: {positions} positions, {len(diffs)} top-{TOP} pairs: mean |difference| "
          f"{statistics.mean(diffs):.4f} nats, max {max(diffs):.4f}; chosen tokens: mean "
          f"{statistics.mean(chosen):.4f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", default=PEER)
    ap.add_argument("--port", type=int, default=18931)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", action="store_true",
                    help="also compare llama-server with itself (flash attention on / off)")
    args = ap.parse_args()
    model = smollm2()
    peer, peer_url = start_peer(args.peer, model, args.port, args.threads)
    try:
        theirs = [probs(peer_url, p) for p in PROMPTS]
    finally:
        peer.kill()
        peer.wait()
    ours = ServerProcess(model, "-c", "1024", "-np", "1", "-t", str(args.threads))
    try:
        mine = [probs(ours.url, p) for p in PROMPTS]
    finally:
        ours.stop()
    print(f"{len(PROMPTS)} prompts, greedy, {N_PREDICT} positions each")
    report("llamazip vs llama-server", *compare(mine, theirs))
    if args.reference:
        peer, peer_url = start_peer(args.peer, model, args.port, args.threads, ["-fa", "off"])
        try:
            other = [probs(peer_url, p) for p in PROMPTS]
        finally:
            peer.kill()
            peer.wait()
        report("llama-server vs llama-server -fa off", *compare(other, theirs))


if __name__ == "__main__":
    main()
