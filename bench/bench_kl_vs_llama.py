"""KL divergence of our next-token distributions from llama.cpp's, measured the way
llama-perplexity measures it (--kl-divergence-base, then --kl-divergence).

    python bench/bench_kl_vs_llama.py [-m MODEL.gguf] [-f TEXT] [-c 128] [--threads 2]

llama-perplexity writes its log-probabilities for the scored half of every chunk
(-c tokens, first token BOS) to a base file; we read its tokens back, evaluate the
same chunks (each as one batch from an empty cache, as our --perplexity does) and
compute, per scored token, KL(llama.cpp || ours) over the tokens whose base
log-probability is above -16 (llama-perplexity's cut), from the base file's 16-bit
quantized log-probabilities. Prints llama.cpp's perplexity, ours, and the mean KL.
With --self, llama-perplexity's own --kl-divergence against its base file with -fa off
(llama.cpp against itself, rounding alone) is printed for scale.
"""

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.models import smollm2  # noqa: E402

PEER = "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-perplexity"
TEXT = "/usr/share/common-licenses/GPL-3"


def read_base(path):
    """(n_ctx, n_vocab, tokens [n_chunk, n_ctx], log-probs [n_chunk, scored, n_vocab])."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"_logits_":
        raise SystemExit(f"{path}: not a llama-perplexity logits file")
    n_ctx, n_vocab, n_chunk = np.frombuffer(data, np.int32, 3, 8)
    at = 20
    tokens = np.frombuffer(data, np.int32, n_ctx * n_chunk, at).reshape(n_chunk, n_ctx)
    at += 4 * n_ctx * n_chunk
    nv = 2 * ((n_vocab + 1) // 2) + 4
    scored = n_ctx - 1 - n_ctx // 2
    rows = np.frombuffer(data, np.uint16, n_chunk * scored * nv, at).reshape(n_chunk, scored, nv)
    head = rows[:, :, :4].copy().view(np.float32)              # scale, min log-prob
    logp = rows[:, :, 4:4 + n_vocab].astype(np.float32) * head[:, :, :1] + head[:, :, 1:2]
    return int(n_ctx), int(n_vocab), tokens, logp


def kl_rows(base_logp, logits):
    """KL(base || ours) per row, as llama-perplexity sums it (base log-prob > -16)."""
    x = logits.astype(np.float64)
    ours = x - x.max(axis=1, keepdims=True)
    ours -= np.log(np.exp(ours).sum(axis=1, keepdims=True))
    b = base_logp.astype(np.float64)
    keep = b > -16.0
    return np.where(keep, np.exp(b) * (b - ours), 0.0).sum(axis=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-f", "--file", default=TEXT)
    ap.add_argument("--bytes", type=int, default=20000, help="first N bytes of the text")
    ap.add_argument("-c", "--ctx", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer", default=PEER)
    ap.add_argument("--self", action="store_true", help="also llama.cpp -fa off vs its base")
    ap.add_argument("--peer-args", default="", help="more llama-perplexity flags, e.g. '-b 128'")
    args = ap.parse_args()
    model = args.model or smollm2()
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "text.txt")
        with open(args.file, "rb") as f:
            open(text, "wb").write(f.read()[:args.bytes])
        base = os.path.join(tmp, "base.kld")
        r = subprocess.run([args.peer, "-m", model, "-f", text, "-c", str(args.ctx), "-t",
                            str(args.threads), "--kl-divergence-base", base]
                           + args.peer_args.split(),
                           capture_output=True, text=True)
        m = re.search(r"Final estimate: PPL = ([\d.]+)", r.stderr + r.stdout)
        if r.returncode or not m:
            raise SystemExit(f"llama-perplexity failed:\n{r.stderr[-2000:]}")
        print(f"llama.cpp: PPL {float(m.group(1)):.4f}")
        if args.self:
            r = subprocess.run([args.peer, "-m", model, "-f", text, "-c", str(args.ctx), "-t",
                                str(args.threads), "-fa", "off", "--kl-divergence-base", base,
                                "--kl-divergence"] + args.peer_args.split(),
                               capture_output=True, text=True)
            k = re.search(r"Mean\s+KLD:\s+([\d.]+)", r.stderr + r.stdout)
            print(f"llama.cpp -fa off vs llama.cpp: mean KL {k.group(1) if k else '?'}")
        n_ctx, n_vocab, tokens, base_logp = read_base(base)

    from runtime.loader import load_session, open_gguf
    session = load_session(open_gguf(model), threads=args.threads, n_ctx=n_ctx)
    first = n_ctx // 2
    kls, nll = [], []
    for chunk, logp in zip(tokens, base_logp):
        inputs = [int(t) for t in chunk]
        if session.tokenizer.add_bos:
            inputs[0] = session.tokenizer.bos_id
        session.reset()
        logits = np.array(session.eval(inputs, all_logits=True), dtype=np.float32)
        rows = logits[first:n_ctx - 1]
        kls.append(kl_rows(logp, rows))
        x = rows.astype(np.float64)
        lse = np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1)) + x.max(axis=1)
        nll.append(lse - x[np.arange(len(rows)), chunk[first + 1:n_ctx]])
    kl = np.concatenate(kls)
    print(f"ours: PPL {math.exp(np.concatenate(nll).mean()):.4f}")
    print(f"KL divergence (llama.cpp || ours), {len(kl)} tokens: mean {kl.mean():.5f}, "
          f"median {np.median(kl):.5f}, max {kl.max():.4f}")


if __name__ == "__main__":
    main()
