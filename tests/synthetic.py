"""Tiny synthetic models for tests: gguf's GGUFWriter, random weights of any type,
and a SentencePiece vocabulary trained here with sentencepiece's trainer.

Weights of types gguf.quants can quantize (F32, F16, BF16, Q4_0..Q8_0) are real
quantizations of random normals; K-quants (which gguf.quants only dequantizes) are
random blocks with sane f16 scale fields, which exercises every bit of the layout.
"""

import os

import numpy as np

from runtime import ggml_types as T

GPL = "/usr/share/common-licenses/GPL-3"

# byte offsets of the f16 scale fields inside one K-quant block
_K_SCALE_FIELDS = {T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2),
                   T.Q6_K: (208,)}


def _gguf():
    import gguf
    return gguf


def random_weight(rng, rows, cols, type_id, std=0.5):
    """(array for GGUFWriter.add_tensor, raw_dtype) of a [rows, cols] weight of type_id."""
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType(type_id)
    if type_id in _K_SCALE_FIELDS:
        _, block, size = T.TYPES[type_id]
        n_blocks = rows * cols // block
        raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
        for off in _K_SCALE_FIELDS[type_id]:
            scale = (np.abs(rng.normal(0, std / 256, n_blocks)) + 1e-4).astype(np.float16)
            raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        return raw.reshape(rows, -1), qtype
    values = rng.normal(0, std, (rows, cols)).astype(np.float32)
    if type_id == T.F32:
        return values, None
    return gguf.quants.quantize(values, qtype), qtype


def train_spm(path_prefix, vocab_size=512, text_path=GPL):
    """Train a small BPE SentencePiece model with byte fallback; returns the .model path."""
    import sentencepiece as spm
    with open(text_path, encoding="utf-8") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=path_prefix, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0,
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return path_prefix + ".model"


def spm_vocab(model_path):
    """(pieces, scores, ggml token types) of a SentencePiece model."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    return pieces, scores, types


# llama.cpp's fallbacks when a row is not a whole number of 256-blocks
_K_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def q4_k_m_type(name, row_length, layer=None):
    """The type llama.cpp's Q4_K_M gives a tensor, simplified: Q4_K by default; Q6_K
    for the output, the token embedding, and attn_v / ffn_down of layer 0 (the real
    rule picks more layers); Q5_K for a fused attn_qkv; and Q5_0 / Q5_1 / Q8_0 when the
    row length is not a multiple of 256 (Gemma 3 270M's 640-wide rows are like that)."""
    if name in ("output.weight", "token_embd.weight"):
        t = T.Q6_K
    elif name.endswith(("attn_v.weight", "ffn_down.weight")) and layer == 0:
        t = T.Q6_K
    elif name.endswith("attn_qkv.weight"):
        t = T.Q5_K
    else:
        t = T.Q4_K
    return _K_FALLBACK[t] if row_length % 256 else t


def write_model(path, spm_model, arch="llama", weight_type=T.Q8_0, dim=64, n_layers=2,
                n_heads=4, n_kv_heads=2, ffn_dim=128, seed=0, tied=False, head_dim=None,
                norm_type=T.F32, embed_type=None, extra_kv=None, window=0, long_rope=False,
                fused=None, weight_std=0.5):
    """Write a random model of `arch` with the SentencePiece vocabulary of `spm_model`.

    Tensor names and shapes are the ones llama.cpp's converter writes for `arch`
    (phi3: fused attn_qkv and a double-height ffn_up without ffn_gate). `weight_type`
    is a type id, or "q4_k_m" for the mix of types a real Q4_K_M file has. `window`
    sets `{arch}.attention.sliding_window`; `long_rope` adds Phi-3's LongRoPE factor
    tensors and attention factor (original context 64, so -c above 64 picks the long
    factors). `fused=False` writes phi3's fused matrices as the separate q, k, v, gate
    and up tensors they split into (the same values), to check the split.
    `weight_std` is the spread of the random weights, or "fan_in" for 1/sqrt(row
    length) like trained models (keeps attention scores near 1, so the softmax is
    not saturated and every key matters).
    """
    gguf = _gguf()
    rng = np.random.default_rng(seed)
    pieces, scores, types = spm_vocab(spm_model)
    n_vocab = len(pieces)
    head_dim = head_dim or dim // n_heads
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(n_layers)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn_dim)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    if head_dim != dim // n_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    extra_kv = dict(extra_kv or {})
    if window:
        extra_kv[f"{arch}.attention.sliding_window"] = int(window)
    if long_rope:
        extra_kv[f"{arch}.rope.scaling.attn_factor"] = 1.19
        extra_kv[f"{arch}.rope.scaling.original_context_length"] = 64
        half = head_dim // 2
        w.add_tensor("rope_factors_long.weight",
                     (1.0 + 20.0 * rng.random(half)).astype(np.float32))
        w.add_tensor("rope_factors_short.weight",
                     (1.0 + 0.5 * rng.random(half)).astype(np.float32))
    for key, value in extra_kv.items():
        if isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        else:
            w.add_string(key, value)

    def std_for(cols):
        return cols ** -0.5 if weight_std == "fan_in" else weight_std

    def tensor(name, rows, cols, type_id, layer=None):
        if weight_type == "q4_k_m" and type_id == "q4_k_m":
            type_id = q4_k_m_type(name, cols, layer)
        data, raw = random_weight(rng, rows, cols, type_id, std_for(cols))
        w.add_tensor(name, data, raw_dtype=raw)

    def fused_tensor(name, parts, cols, type_id, layer):
        """One matrix whose output rows are `parts` [(name, rows)] stacked, written
        as one tensor or (fused False) as the parts."""
        if weight_type == "q4_k_m" and type_id == "q4_k_m":
            type_id = q4_k_m_type(name, cols, layer)
        data, raw = random_weight(rng, sum(n for _, n in parts), cols, type_id, std_for(cols))
        if fused is False:
            at = 0
            for part, n in parts:
                w.add_tensor(part, np.ascontiguousarray(data[at:at + n]), raw_dtype=raw)
                at += n
        else:
            w.add_tensor(name, data, raw_dtype=raw)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
    tensor("token_embd.weight", n_vocab, dim, embed_type or weight_type)
    for i in range(n_layers):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight", dim)
        if arch == "phi3":
            fused_tensor(p + "attn_qkv.weight", [(p + "attn_q.weight", q_dim),
                                                 (p + "attn_k.weight", kv_dim),
                                                 (p + "attn_v.weight", kv_dim)],
                         dim, weight_type, i)
        else:
            tensor(p + "attn_q.weight", q_dim, dim, weight_type, i)
            tensor(p + "attn_k.weight", kv_dim, dim, weight_type, i)
            tensor(p + "attn_v.weight", kv_dim, dim, weight_type, i)
        tensor(p + "attn_output.weight", dim, q_dim, weight_type, i)
        if arch == "qwen2":
            for name, n in (("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)):
                w.add_tensor(p + name, (0.1 * rng.standard_normal(n)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            norm(p + "attn_q_norm.weight", head_dim)
            norm(p + "attn_k_norm.weight", head_dim)
        if arch == "gemma3":
            norm(p + "post_attention_norm.weight", dim)
            norm(p + "post_ffw_norm.weight", dim)
        norm(p + "ffn_norm.weight", dim)
        if arch == "phi3":
            fused_tensor(p + "ffn_up.weight", [(p + "ffn_gate.weight", ffn_dim),
                                               (p + "ffn_up.weight", ffn_dim)],
                         dim, weight_type, i)
        else:
            tensor(p + "ffn_gate.weight", ffn_dim, dim, weight_type, i)
            tensor(p + "ffn_up.weight", ffn_dim, dim, weight_type, i)
        tensor(p + "ffn_down.weight", dim, ffn_dim, weight_type, i)
    norm("output_norm.weight", dim)
    if not tied:
        tensor("output.weight", n_vocab, dim, weight_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def spm_llama(tmpdir, weight_type=T.Q8_0, **kw):
    """A synthetic llama with a trained SentencePiece vocab, written under tmpdir."""
    if T.TYPES[weight_type][1] == 256:   # K-quant rows are whole 256-blocks
        kw.setdefault("dim", 256)
        kw.setdefault("ffn_dim", 512)
    spm_model = train_spm(os.path.join(tmpdir, "spm"))
    return write_model(os.path.join(tmpdir, "model.gguf"), spm_model, weight_type=weight_type,
                       **kw)
