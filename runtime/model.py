"""The transformer: hyperparameters from GGUF metadata, weights from the map, forward pass.

One decoder serves the LLaMA family and its close relatives; each architecture is a
set of switches on the same block (biases on q/k/v, norms on q and k, norms after
attention and FFN, a GELU gate, sliding-window layers, fused q|k|v and gate|up
matrices). All arithmetic goes through the backend (runtime/backend_numpy.py
documents the interface).

What each architecture switches on follows llama.cpp's model code (llama-model.cpp
and src/models/*.cpp), since llama.cpp is what we match token for token:

    llama, mistral  adjacent-pair rope; everything else rotates NeoX halves
    qwen2           biases on q, k and v
    qwen3           RMS norm on each head of q and k, before rope
    phi3            fused attn_qkv (q|k|v by columns) and ffn_up (gate|up), LongRoPE
                    factors and attention factor, q scaled before attention
    gemma3          embeddings times sqrt(dim), GELU gate, q/k norms, norms after
                    attention and FFN, 5 sliding-window layers (rope base 10k, no rope
                    scaling) then 1 global, q scaled before attention
"""

import copy
import math

from runtime import ggml_types, validate
from runtime.rope import RopeParams
from runtime.errors import UserError

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3")

# llama.cpp rotates adjacent pairs for these (their GGUF q/k weights are permuted to
# match) and uses the NeoX half-split layout for the rest.
_NORMAL_ROPE = ("llama", "mistral")


class Config:
    """Hyperparameters, read from `{arch}.*` metadata keys."""

    def __init__(self, gguf):
        arch = gguf.architecture
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UserError(f"{gguf.source}: unsupported model architecture {arch!r}; "
                            f"llamazip runs: {', '.join(SUPPORTED_ARCHITECTURES)}")
        validate.check_hyperparameters(gguf)   # types and ranges of what we read below
        key = gguf.arch_key
        self.arch = arch
        try:
            self.n_layers = int(key("block_count"))
            self.dim = int(key("embedding_length"))
            self.n_heads = int(key("attention.head_count"))
            ffn = key("feed_forward_length")
        except (TypeError, ValueError):
            raise UserError(f"{gguf.source}: missing {arch}.block_count / embedding_length / "
                            "attention.head_count metadata; the GGUF is incomplete") from None
        self.ffn_dim = int(ffn[0] if isinstance(ffn, list) else ffn)
        kv = key("attention.head_count_kv", self.n_heads)
        self.n_kv_heads = int(kv[0] if isinstance(kv, list) else kv)
        self.head_dim = int(key("attention.key_length", self.dim // self.n_heads))
        self.eps = float(key("attention.layer_norm_rms_epsilon", 1e-5))
        self.n_ctx_train = int(key("context_length", 2048))
        tokens = gguf.get("tokenizer.ggml.tokens")
        self.vocab_size = int(key("vocab_size", len(tokens) if tokens else 0))

        self.n_rot = int(key("rope.dimension_count", self.head_dim))
        self.rope_base = float(key("rope.freq_base", 10000.0))
        # llama.cpp reads a missing scaling type as linear: a bare factor still applies.
        scaling = key("rope.scaling.type", "linear")
        factor = float(key("rope.scaling.factor", 0.0) or 0.0)
        self.rope_scale = 1.0 / factor if scaling == "linear" and factor > 0 else 1.0
        self.rope_neox = arch not in _NORMAL_ROPE
        # LongRoPE (Phi-3): long factors once the context outgrows the original one.
        self.n_ctx_orig = int(key("rope.scaling.original_context_length", self.n_ctx_train))
        self.rope_attn_factor = float(key("rope.scaling.attn_factor", 1.0) or 1.0)

        self.window = int(key("attention.sliding_window", 0) or 0)
        if arch == "phi3":
            # llama.cpp turns Phi-3's window off (the converters write values it does
            # not trust, llama.cpp PR 13676); we follow it to keep its outputs.
            self.window = 0
        # Gemma 3: five local (sliding-window) layers, then one global; the local ones
        # rotate with base 10k and no rope scaling whatever the global layers use.
        self.window_pattern = 6 if arch == "gemma3" else (1 if self.window else 0)
        self.rope_base_local = 10000.0 if arch == "gemma3" else self.rope_base
        self.rope_scale_local = 1.0 if arch == "gemma3" else self.rope_scale

        self.embed_scale = math.sqrt(self.dim) if arch == "gemma3" else 1.0
        self.gelu_ffn = arch == "gemma3"
        self.attn_scale = 1.0 / math.sqrt(self.head_dim)
        if arch == "gemma3" and self.n_layers == 62:
            # llama.cpp's rule for Gemma 3 27B (query_pre_attn_scalar = dim / heads)
            self.attn_scale = 1.0 / math.sqrt(self.dim // self.n_heads)
        # Phi-3 and Gemma 3 multiply q by the scale before attention (llama.cpp's graph
        # does, then attends with scale 1); the others scale the scores. Same maths,
        # different roundings: attention rounds q to f16 after the product. (On Gemma 3
        # 270M this order moves perplexity from 20.4296 to 20.3902; llama.cpp: 20.3576.)
        self.scale_q_first = arch in ("phi3", "gemma3")

    def layer_is_local(self, layer):
        """Whether `layer` attends only to the last `window` positions."""
        if not self.window or not self.window_pattern:
            return False
        if self.window_pattern == 1:
            return True
        return layer % self.window_pattern < self.window_pattern - 1


class LayerWeights:
    def __init__(self, load, optional, i):
        p = f"blk.{i}."
        self.attn_norm = load(p + "attn_norm.weight")
        # q, k and v in one matrix (Phi-3), its output columns q | k | v; or three.
        self.wqkv = optional(p + "attn_qkv.weight")
        fused = self.wqkv is not None
        self.wq = None if fused else load(p + "attn_q.weight")
        self.wk = None if fused else load(p + "attn_k.weight")
        self.wv = None if fused else load(p + "attn_v.weight")
        self.wo = load(p + "attn_output.weight")
        self.bq = optional(p + "attn_q.bias")
        self.bk = optional(p + "attn_k.bias")
        self.bv = optional(p + "attn_v.bias")
        self.q_norm = optional(p + "attn_q_norm.weight")
        self.k_norm = optional(p + "attn_k_norm.weight")
        self.attn_post_norm = optional(p + "post_attention_norm.weight")
        self.ffn_norm = load(p + "ffn_norm.weight")
        # No ffn_gate (Phi-3): ffn_up holds gate and up, output columns gate | up.
        self.w_gate = optional(p + "ffn_gate.weight")
        self.w_up = load(p + "ffn_up.weight")
        self.w_down = load(p + "ffn_down.weight")
        self.ffn_post_norm = optional(p + "post_ffw_norm.weight")


class Model:
    """Weights (quantized, in the map) plus the forward pass over a KV cache."""

    def __init__(self, gguf, backend, n_ctx=None):
        self.config = cfg = Config(gguf)
        self.backend = backend
        self.gguf = gguf
        tokens = gguf.get("tokenizer.ggml.tokens")
        validate.check_tensor_shapes(gguf, cfg, len(tokens) if tokens else cfg.vocab_size)

        def load(name):
            if name not in gguf.tensors:
                raise UserError(f"{gguf.source}: tensor {name!r} is missing; "
                                f"the GGUF is not a complete {cfg.arch} model")
            return backend.weight(gguf, name)

        def optional(name):
            return backend.weight(gguf, name) if name in gguf.tensors else None

        self.tok_embd = load("token_embd.weight")
        self.layers = [LayerWeights(load, optional, i) for i in range(cfg.n_layers)]
        self._check_fused_shapes(gguf)
        self.output_norm = load("output_norm.weight")
        # Tied embeddings: the output projection reuses the token embedding.
        self.output = optional("output.weight") or self.tok_embd

        # Like llama.cpp: -c 0 or none means the training context, capped to keep the cache modest.
        self.n_ctx = int(n_ctx) if n_ctx else min(cfg.n_ctx_train, 4096)

        # Per-pair rope factors: Llama 3.1's rope_freqs, or LongRoPE's two sets, of
        # which llama.cpp picks by the context size asked for (not by position).
        freq_factors = None
        if "rope_freqs.weight" in gguf.tensors:
            freq_factors = _f32_values(gguf, "rope_freqs.weight")
        else:
            which = "long" if self.n_ctx > cfg.n_ctx_orig else "short"
            if f"rope_factors_{which}.weight" in gguf.tensors:
                freq_factors = _f32_values(gguf, f"rope_factors_{which}.weight")
        if freq_factors is not None and len(freq_factors) != cfg.n_rot // 2:
            raise UserError(f"{gguf.source}: rope factors have {len(freq_factors)} values, "
                            f"expected {cfg.n_rot // 2}")
        self.rope_global = RopeParams(cfg.n_rot, cfg.rope_base, cfg.rope_scale, cfg.rope_neox,
                                      freq_factors, cfg.rope_attn_factor)
        self.rope_local = RopeParams(cfg.n_rot, cfg.rope_base_local, cfg.rope_scale_local,
                                     cfg.rope_neox, freq_factors, cfg.rope_attn_factor)

        self.cache = backend.kv_cache(cfg.n_layers, self.n_ctx, cfg.n_kv_heads * cfg.head_dim)

    def _check_fused_shapes(self, gguf):
        """Fused matrices are split by column counts; wrong ones would split silently."""
        cfg = self.config
        qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        for i, layer in enumerate(self.layers):
            if layer.wqkv is not None and layer.wqkv.shape[1] != qkv:
                raise UserError(f"{gguf.source}: blk.{i}.attn_qkv.weight has "
                                f"{layer.wqkv.shape[1]} outputs, expected q|k|v = {qkv}")
            if layer.w_gate is None and layer.w_up.shape[1] != 2 * cfg.ffn_dim:
                raise UserError(f"{gguf.source}: blk.{i}.ffn_up.weight has "
                                f"{layer.w_up.shape[1]} outputs and there is no ffn_gate; "
                                f"a fused gate|up needs {2 * cfg.ffn_dim}")

    def with_own_cache(self, n_ctx=None):
        """A twin over the same weights with a KV cache of its own (a server slot) of
        `n_ctx` positions (default: this model's)."""
        twin = copy.copy(self)
        cfg = self.config
        twin.n_ctx = int(n_ctx) if n_ctx else self.n_ctx
        twin.cache = self.backend.kv_cache(cfg.n_layers, twin.n_ctx, cfg.n_kv_heads * cfg.head_dim)
        return twin

    def forward(self, tokens, pos0, last_only=True, hidden=False):
        """Run `tokens` at positions pos0.. through the model, filling the KV cache.

        Returns logits (backend activations): one row per token, or only the last
        row when `last_only` (generation needs nothing else). With `hidden`, the
        final normalised hidden states instead of logits (embeddings).
        """
        cfg, b = self.config, self.backend
        if pos0 + len(tokens) > self.n_ctx:
            raise UserError(f"{pos0 + len(tokens)} tokens do not fit in the context of "
                            f"{self.n_ctx}; raise -c or shorten the prompt")
        positions = range(pos0, pos0 + len(tokens))
        x = self.decoder(tokens, positions, [self.cache] * len(tokens))
        if last_only:
            x = b.take_rows(x, len(tokens) - 1, len(tokens))
        x = b.rmsnorm(x, self.output_norm, cfg.eps)
        return x if hidden else b.matmul(x, self.output)

    def forward_batch(self, tokens, positions, caches):
        """One decoding step for several sequences: token r sits at positions[r] of
        caches[r]. The matmuls see all rows at once (one pass over the weights for
        the whole batch, which is what makes parallel slots cheap); each row's rope
        and attention use its own position and cache. Returns logits, one row per
        sequence."""
        cfg, b = self.config, self.backend
        for pos, cache in zip(positions, caches):
            if pos + 1 > self.n_ctx:
                raise UserError(f"{pos + 1} tokens do not fit in the context of {self.n_ctx}")
        x = self.decoder(tokens, positions, caches)
        x = b.rmsnorm(x, self.output_norm, cfg.eps)
        return b.matmul(x, self.output)

    def decoder(self, tokens, positions, caches):
        """The residual stream after every block; row i sits at positions[i] of
        caches[i]."""
        cfg, b = self.config, self.backend
        x = b.embed(self.tok_embd, tokens)
        if cfg.embed_scale != 1.0:
            b.scale(x, cfg.embed_scale)
        for i, layer in enumerate(self.layers):
            h = b.rmsnorm(x, layer.attn_norm, cfg.eps)
            h = self.attention(h, layer, i, positions, caches)
            if layer.attn_post_norm is not None:
                h = b.rmsnorm(h, layer.attn_post_norm, cfg.eps)
            b.add(x, h)
            h = b.rmsnorm(x, layer.ffn_norm, cfg.eps)
            h = self.feed_forward(h, layer)
            if layer.ffn_post_norm is not None:
                h = b.rmsnorm(h, layer.ffn_post_norm, cfg.eps)
            b.add(x, h)
        return x

    def attention(self, h, layer, i, positions, caches):
        cfg, b = self.config, self.backend
        if layer.wqkv is not None:
            q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
            qkv = b.matmul(h, layer.wqkv)
            q = b.take_cols(qkv, 0, q_dim)
            k = b.take_cols(qkv, q_dim, q_dim + kv_dim)
            v = b.take_cols(qkv, q_dim + kv_dim, q_dim + 2 * kv_dim)
        else:
            q = b.matmul(h, layer.wq)
            k = b.matmul(h, layer.wk)
            v = b.matmul(h, layer.wv)
        if layer.bq is not None:
            b.add_bias(q, layer.bq)
            b.add_bias(k, layer.bk)
            b.add_bias(v, layer.bv)
        if layer.q_norm is not None:
            q = b.rmsnorm(q, layer.q_norm, cfg.eps)
            k = b.rmsnorm(k, layer.k_norm, cfg.eps)
        return b.matmul(self.attend(q, k, v, i, positions, caches), layer.wo)

    def attend(self, q, k, v, i, positions, caches):
        """Rotate q and k for their positions and attend over their caches (layer i)."""
        cfg, b = self.config, self.backend
        rope, scale, window = self.attention_params(i)
        b.rope(q, positions, cfg.n_heads, cfg.head_dim, rope)
        b.rope(k, positions, cfg.n_kv_heads, cfg.head_dim, rope)
        scale = self.scale_queries(q, scale)
        return b.attention(q, k, v, caches, i, positions, cfg.n_heads, cfg.n_kv_heads,
                           cfg.head_dim, scale, window)

    def attention_params(self, i):
        """Layer i's rope, score scale and window (local layers slide, global ones don't)."""
        cfg = self.config
        local = cfg.layer_is_local(i)
        return (self.rope_local if local else self.rope_global, cfg.attn_scale,
                cfg.window if local else 0)

    def scale_queries(self, q, scale):
        """Models that scale the queries before the dot products (as their reference
        does) get it here, and scores are then left alone; returns the score scale."""
        if self.config.scale_q_first:
            self.backend.scale(q, scale)
            return 1.0
        return scale

    def feed_forward(self, h, layer):
        b = self.backend
        if layer.w_gate is None:
            n = self.config.ffn_dim
            gate_up = b.matmul(h, layer.w_up)
            gate, up = b.take_cols(gate_up, 0, n), b.take_cols(gate_up, n, 2 * n)
        else:
            gate = b.matmul(h, layer.w_gate)
            up = b.matmul(h, layer.w_up)
        act = b.geglu(gate, up) if self.config.gelu_ffn else b.swiglu(gate, up)
        return b.matmul(act, layer.w_down)


def _f32_values(gguf, name):
    import struct
    info = gguf.tensors[name]
    if info.type != ggml_types.F32:
        raise UserError(f"{gguf.source}: {name} must be F32")
    raw = gguf.tensor_bytes(name)
    return list(struct.unpack("<%df" % info.n_elements, raw))
