"""Models in the shapes of real ones, with random weights, for measuring speed at size.

    python bench/shapes.py tinyllama-1.1b Q4_0 Q4_K_M Q8_0
    python bench/shapes.py --list
    python bench/shapes.py llama-7b Q4_0 --quantize PATH/llama-quantize

Each shape is written once as F16 (norms and biases F32) with gguf-py's GGUFWriter,
streaming tensor by tensor so a 7B model never sits in memory, then quantized by
llama.cpp's own llama-quantize, so the files carry llama.cpp's type mixes (Q4_K_M
puts Q6_K on some tensors, exactly as for a real model). Results are cached in
~/.cache/llamazip/shapes/<shape>-<TYPE>.gguf; the F16 intermediate is deleted after
quantizing unless --keep-f16 (it is 2-13 GB).

The weights are random: speed does not depend on their values, only on shapes and
types. The vocabulary is synthetic but of the real kind and size (SentencePiece
with byte fallback for the LLaMA shapes, byte-level BPE with merges for Llama 3 and
Qwen 2.5), so tokenizers load and the output layer has the real width.
"""

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "llamazip", "shapes")
PEER_QUANTIZE = "/work/peer/llama_cpp_python-0.3.36/vendor/llama.cpp/build/bin/llama-quantize"

# name -> hyperparameters of the model whose shape it copies
SHAPES = {
    "tinyllama-1.1b": dict(arch="llama", dim=2048, layers=22, heads=32, kv_heads=4, ff=5632,
                           vocab=32000, tokenizer="spm", rope_base=10000.0, tied=False),
    "llama-3.2-1b": dict(arch="llama", dim=2048, layers=16, heads=32, kv_heads=8, ff=8192,
                         vocab=128256, tokenizer="llama-bpe", rope_base=500000.0, tied=True),
    "qwen2.5-1.5b": dict(arch="qwen2", dim=1536, layers=28, heads=12, kv_heads=2, ff=8960,
                         vocab=151936, tokenizer="qwen2", rope_base=1000000.0, tied=True),
    "llama-7b": dict(arch="llama", dim=4096, layers=32, heads=32, kv_heads=32, ff=11008,
                     vocab=32000, tokenizer="spm", rope_base=10000.0, tied=False),
}

# llama-quantize's names for the file types we make
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K")


def path_for(shape, qtype):
    return os.path.join(CACHE, f"{shape}-{qtype}.gguf")


# ---------------------------------------------------------------- vocabularies

def _words(n, rng):
    """n distinct lowercase strings, short first (like a real vocabulary's pieces)."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out, seen, length = [], set(), 2
    while len(out) < n:
        batch = rng.integers(0, 26, size=(4 * (n - len(out)) + 64, length))
        for row in batch:
            w = "".join(letters[row])
            if w not in seen:
                seen.add(w)
                out.append(w)
                if len(out) == n:
                    break
        length += 1
    return out


def spm_vocab(n, rng):
    """SentencePiece with byte fallback: <unk> <s> </s>, 256 byte tokens, pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    pieces = _words(n - len(tokens), rng)
    tokens += ["\u2581" + w if i % 2 == 0 else w for i, w in enumerate(pieces)]
    types += [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, types, None


def _byte_chars():
    """GPT-2's printable stand-ins for the 256 byte values (byte-level BPE)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def bpe_vocab(n, specials, rng):
    """Byte-level BPE: the 256 byte tokens, merged tokens (each the merge of two earlier
    ones, in merge order), then the special tokens at the end."""
    tokens = _byte_chars()
    index = set(tokens)
    merges = []
    n_merged = n - 256 - len(specials)
    letters = tokens[65:91] + tokens[32:58]   # a spread of byte tokens to start from
    pool = list(letters)
    while len(merges) < n_merged:
        a = pool[int(rng.integers(0, len(pool)))]
        b = letters[int(rng.integers(0, len(letters)))] if rng.random() < 0.5 else \
            pool[int(rng.integers(0, len(pool)))]
        t = a + b
        if t in index or len(t) > 16:
            continue
        index.add(t)
        tokens.append(t)
        merges.append(f"{a} {b}")
        pool.append(t)
    types = [1] * len(tokens) + [3] * len(specials)
    tokens += specials
    return tokens, None, types, merges


def vocab_for(shape, rng):
    kind, n = shape["tokenizer"], shape["vocab"]
    if kind == "spm":
        return spm_vocab(n, rng) + ("llama", None, 1, 2)
    if kind == "llama-bpe":
        specials = ["<|begin_of_text|>", "<|end_of_text|>"] + \
            [f"<|reserved_special_token_{i}|>" for i in range(254)]
        return bpe_vocab(n, specials, rng) + ("gpt2", "llama-bpe", n - 256, n - 255)
    # Qwen 2.5: 151643 regular tokens, then <|endoftext|> and the other specials,
    # padded to the embedding's 151936 rows
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + \
        [f"<|extra_{i}|>" for i in range(n - 151643 - 3)]
    eos = n - len(specials)
    return bpe_vocab(n, specials, rng) + ("gpt2", "qwen2", eos, eos)


# ---------------------------------------------------------------- tensors

def tensor_list(shape):
    """(name, numpy shape, dtype) in file order; matrices are (rows, row length)."""
    d, ff, hd = shape["dim"], shape["ff"], shape["dim"] // shape["heads"]
    kv = hd * shape["kv_heads"]
    out = [("token_embd.weight", (shape["vocab"], d), np.float16)]
    for i in range(shape["layers"]):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (d,), np.float32),
                (p + "attn_q.weight", (d, d), np.float16),
                (p + "attn_k.weight", (kv, d), np.float16),
                (p + "attn_v.weight", (kv, d), np.float16)]
        if shape["arch"] == "qwen2":
            out += [(p + "attn_q.bias", (d,), np.float32), (p + "attn_k.bias", (kv,), np.float32),
                    (p + "attn_v.bias", (kv,), np.float32)]
        out += [(p + "attn_output.weight", (d, d), np.float16),
                (p + "ffn_norm.weight", (d,), np.float32),
                (p + "ffn_gate.weight", (ff, d), np.float16),
                (p + "ffn_up.weight", (ff, d), np.float16),
                (p + "ffn_down.weight", (d, ff), np.float16)]
    out.append(("output_norm.weight", (d,), np.float32))
    if not shape["tied"]:
        out.append(("output.weight", (shape["vocab"], d), np.float16))
    return out


class RandomHalves:
    """Random f16 weights from one pool of random bits, taken at a moving offset: each
    tensor gets different values and making 7B of them costs no more than a copy."""

    def __init__(self, rng, size=1 << 26):
        # magnitudes 2^-10 .. 2^-4, log-uniform, random signs: every block has a spread
        bits = rng.integers(0x1400, 0x2C00, size=size, dtype=np.uint16)
        bits |= (rng.integers(0, 2, size=size, dtype=np.uint16) << 15)
        self.pool = bits.view(np.float16)
        self.at = 0

    def take(self, shape):
        n = int(np.prod(shape))
        out = np.empty(n, np.float16)
        done = 0
        while done < n:
            step = min(n - done, len(self.pool) - self.at)
            out[done:done + step] = self.pool[self.at:self.at + step]
            done += step
            self.at = (self.at + step + 7919) % len(self.pool)
        return out.reshape(shape)


def write_f16(name, shape, path):
    import gguf
    rng = np.random.default_rng(sum(map(ord, name)))   # the same file on every run
    tokens, scores, types, merges, model, pre, bos, eos = vocab_for(shape, rng)
    w = gguf.GGUFWriter(path + ".tmp", shape["arch"])
    w.add_name(f"random {name}")
    w.add_context_length(4096 if shape["vocab"] == 32000 else 131072)
    w.add_embedding_length(shape["dim"])
    w.add_block_count(shape["layers"])
    w.add_feed_forward_length(shape["ff"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_rope_dimension_count(shape["dim"] // shape["heads"])
    w.add_rope_freq_base(shape["rope_base"])
    w.add_layer_norm_rms_eps(1e-5 if shape["arch"] == "llama" else 1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model(model)
    if pre:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_token_types(types)
    if merges is not None:
        w.add_token_merges(merges)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(model == "llama" or pre == "llama-bpe")
    tensors = tensor_list(shape)
    for tname, tshape, dtype in tensors:
        w.add_tensor_info(tname, tshape, np.dtype(dtype), int(np.prod(tshape)) * np.dtype(dtype).itemsize)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    halves = RandomHalves(rng)
    for tname, tshape, dtype in tensors:
        if dtype == np.float32:
            data = (1.0 + 0.1 * rng.standard_normal(tshape)).astype(np.float32) \
                if tname.endswith("norm.weight") else 0.02 * rng.standard_normal(tshape).astype(np.float32)
        else:
            data = halves.take(tshape)
        w.write_tensor_data(data)
    w.close()
    os.replace(path + ".tmp", path)


def make(name, qtypes, quantize, keep_f16=False, threads=None):
    os.makedirs(CACHE, exist_ok=True)
    shape = SHAPES[name]
    f16 = path_for(name, "F16")
    todo = [q for q in qtypes if q != "F16" and not os.path.exists(path_for(name, q))]
    if (todo or "F16" in qtypes) and not os.path.exists(f16):
        need = sum(int(np.prod(s)) * np.dtype(t).itemsize for _, s, t in tensor_list(shape))
        free = shutil.disk_usage(CACHE).free
        if free < need * 1.5:
            sys.exit(f"shapes: {name} needs {need / 2**30:.1f} GiB free for its F16 file, "
                     f"{CACHE} has {free / 2**30:.1f}; free some space and run again")
        print(f"writing {f16} ({need / 2**30:.1f} GiB)", flush=True)
        write_f16(name, shape, f16)
    for q in todo:
        out = path_for(name, q)
        print(f"quantizing {out}", flush=True)
        cmd = [quantize, f16, out + ".tmp", q] + ([str(threads)] if threads else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"shapes: llama-quantize failed on {f16}:\n{r.stderr[-2000:]}")
        os.replace(out + ".tmp", out)
    if not keep_f16 and os.path.exists(f16) and "F16" not in qtypes:
        os.remove(f16)
    return [path_for(name, q) for q in qtypes]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    ap.add_argument("types", nargs="*", default=["Q4_0"], help=f"any of {', '.join(TYPES)}, F16")
    ap.add_argument("--quantize", default=os.environ.get("LLAMA_QUANTIZE", PEER_QUANTIZE),
                    help="llama.cpp's llama-quantize binary")
    ap.add_argument("--keep-f16", action="store_true", help="keep the F16 intermediate")
    ap.add_argument("-t", "--threads", type=int, help="llama-quantize threads")
    ap.add_argument("--list", action="store_true", help="list the shapes and cached files")
    args = ap.parse_args()
    if args.list or not args.shape:
        for name, s in SHAPES.items():
            cached = [q for q in TYPES + ("F16",) if os.path.exists(path_for(name, q))]
            print(f"{name:16s} dim {s['dim']} layers {s['layers']} heads {s['heads']}/{s['kv_heads']} "
                  f"ff {s['ff']} vocab {s['vocab']}  cached: {', '.join(cached) or '-'}")
        return
    bad = [q for q in args.types if q not in TYPES + ("F16",)]
    if bad:
        sys.exit(f"shapes: unknown type {bad[0]}; choose from {', '.join(TYPES)}, F16")
    if any(q != "F16" for q in args.types) and not os.access(args.quantize, os.X_OK):
        sys.exit(f"shapes: llama-quantize not found at {args.quantize}; "
                 "pass --quantize PATH or set LLAMA_QUANTIZE")
    for p in make(args.shape, args.types, args.quantize, args.keep_f16, args.threads):
        print(p)


if __name__ == "__main__":
    main()
