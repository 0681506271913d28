"""Checks on a parsed GGUF before anything computes with it.

The reader (gguf.py) makes sure the header is well formed: counts, nesting, each
tensor's bytes inside the file. This module checks what the values mean: every
metadata value the runtime reads has the right type and a sane range, and every
tensor the model uses has the shape the hyperparameters imply. The C kernels trust
those shapes (they get addresses, not buffers), so a file that passes here cannot
make them read or write outside what was mapped or allocated.

The runtime calls each part where it reads the values: hyperparameters in
model.Config, tokenizer keys in the Tokenizer, shapes when the Model is built;
loader.check_model runs them all without building anything, and is what the bundler
calls, so that build.py refuses exactly what the runtime would.
"""

import math

from runtime import ggml_types
from runtime.errors import UserError

# Ranges wide enough for any published model, narrow enough that sizes computed
# from them stay far inside int64 and the kernels' fixed limits.
MAX_LAYERS = 1024
MAX_EMBEDDING = 1 << 17
MAX_HEADS = 4096
MAX_HEAD_DIM = 1024           # kernels/ops.c LZ_MAX_HEAD_DIM: a query head lives on the stack
MAX_FFN = 1 << 20
MAX_CONTEXT = 1 << 24
MAX_VOCAB = 1 << 24           # token ids are int32 in the kernels


def _fail(gguf, key, value, want):
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise UserError(f"{_source(gguf)}: metadata {key} = {shown} is not {want}; "
                    "the GGUF is damaged or was written wrongly, convert it again")


def _source(gguf):
    return getattr(gguf, "source", "model")


def _metadata(gguf):
    return gguf if isinstance(gguf, dict) else gguf.metadata


def _is_int(v):
    return type(v) is int   # bool is an int subclass and not a count


def _is_number(v):
    return (type(v) in (int, float)) and math.isfinite(v)


def get_int(gguf, key, default=None, lo=None, hi=None, per_layer=False):
    """An integer metadata value in [lo, hi]; `default` when absent. With
    `per_layer`, an array of equal values (one per layer) is accepted as one."""
    value = _metadata(gguf).get(key)
    if value is None:
        return default
    if per_layer and isinstance(value, list):
        if not value or not all(_is_int(v) for v in value) or len(set(value)) != 1:
            _fail(gguf, key, value, "an integer, or one integer repeated for every layer")
        value = value[0]
    if not _is_int(value):
        _fail(gguf, key, value, "an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        _fail(gguf, key, value, f"an integer from {lo} to {hi}")
    return value


def get_float(gguf, key, default=None, lo=None, hi=None):
    """A finite number in [lo, hi]; `default` when absent."""
    value = _metadata(gguf).get(key)
    if value is None:
        return default
    if not _is_number(value):
        _fail(gguf, key, value, "a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        _fail(gguf, key, value, f"a number from {lo} to {hi}")
    return float(value)


def get_str(gguf, key, default=None):
    value = _metadata(gguf).get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        _fail(gguf, key, value, "a string")
    return value


def get_bool(gguf, key, default=None):
    value = _metadata(gguf).get(key)
    if value is None:
        return default
    if type(value) is not bool:
        _fail(gguf, key, value, "a boolean")
    return value


def get_list(gguf, key, item_ok, item_name, max_len=None):
    """A list whose items all pass `item_ok`, or None when absent."""
    value = _metadata(gguf).get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        _fail(gguf, key, value, f"an array of {item_name}")
    if max_len is not None and len(value) > max_len:
        _fail(gguf, key, f"<{len(value)} values>", f"an array of at most {max_len} {item_name}")
    for item in value:
        if not item_ok(item):
            _fail(gguf, key, item, f"an array of {item_name} (one value is not)")
    return value


# ---------------------------------------------------------------- hyperparameters

def check_hyperparameters(gguf):
    """Types and ranges of every `{arch}.*` key model.Config reads."""
    arch = get_str(gguf, "general.architecture")
    if arch is None:
        raise UserError(f"{_source(gguf)}: general.architecture is missing; "
                        "the GGUF is incomplete")
    get_str(gguf, "general.name")
    # Config counts the vocabulary when vocab_size is absent
    get_list(gguf, "tokenizer.ggml.tokens", lambda t: isinstance(t, str), "strings", MAX_VOCAB)
    p = arch + "."
    for key in ("block_count", "embedding_length", "attention.head_count",
                "feed_forward_length"):
        if _metadata(gguf).get(p + key) is None:
            raise UserError(f"{_source(gguf)}: missing {p}{key} metadata; the GGUF is "
                            "incomplete")
    get_int(gguf, p + "block_count", lo=1, hi=MAX_LAYERS)
    dim = get_int(gguf, p + "embedding_length", lo=1, hi=MAX_EMBEDDING)
    n_heads = get_int(gguf, p + "attention.head_count", lo=1, hi=MAX_HEADS, per_layer=True)
    n_kv = get_int(gguf, p + "attention.head_count_kv", n_heads, lo=1, hi=n_heads,
                   per_layer=True)
    if n_heads % n_kv:
        _fail(gguf, p + "attention.head_count_kv", n_kv,
              f"a divisor of the head count {n_heads}")
    get_int(gguf, p + "feed_forward_length", lo=1, hi=MAX_FFN, per_layer=True)
    if dim // n_heads < 1 and _metadata(gguf).get(p + "attention.key_length") is None:
        _fail(gguf, p + "attention.head_count", n_heads,
              f"at most the embedding length {dim}")
    head_dim = get_int(gguf, p + "attention.key_length", dim // n_heads, lo=1, hi=MAX_HEAD_DIM)
    value_dim = get_int(gguf, p + "attention.value_length", head_dim, lo=1, hi=MAX_HEAD_DIM)
    if value_dim != head_dim:
        _fail(gguf, p + "attention.value_length", value_dim,
              f"the key length {head_dim} (llamazip needs them equal)")
    n_rot = get_int(gguf, p + "rope.dimension_count", head_dim, lo=0, hi=head_dim)
    if n_rot % 2:
        _fail(gguf, p + "rope.dimension_count", n_rot, "even")
    get_float(gguf, p + "attention.layer_norm_rms_epsilon", lo=0.0, hi=1.0)
    get_int(gguf, p + "context_length", lo=1, hi=MAX_CONTEXT)
    get_int(gguf, p + "vocab_size", lo=1, hi=MAX_VOCAB)
    get_float(gguf, p + "rope.freq_base", lo=1e-6)
    get_str(gguf, p + "rope.scaling.type")
    get_float(gguf, p + "rope.scaling.factor", lo=0.0)
    get_int(gguf, p + "rope.scaling.original_context_length", lo=1, hi=MAX_CONTEXT)
    get_float(gguf, p + "rope.scaling.attn_factor", lo=0.0)
    get_int(gguf, p + "attention.sliding_window", lo=0, hi=MAX_CONTEXT)


# ---------------------------------------------------------------- tokenizer

_SPECIAL_IDS = ("bos", "eos", "unknown", "eot", "eom", "padding", "sep", "cls", "mask",
                "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
                "prefix", "suffix", "middle")


def check_tokenizer(gguf):
    """Types of the tokenizer keys, and arrays as long as the vocabulary."""
    get_str(gguf, "tokenizer.ggml.model")
    get_str(gguf, "tokenizer.ggml.pre")
    tokens = get_list(gguf, "tokenizer.ggml.tokens", lambda t: isinstance(t, str), "strings",
                      MAX_VOCAB)
    n = len(tokens) if tokens is not None else 0
    for key, ok, what in (("scores", _is_number_or_nan, "numbers"),
                          ("token_type", _is_int, "integers")):
        values = get_list(gguf, "tokenizer.ggml." + key, ok, what)
        if values is not None and len(values) != n:
            raise UserError(f"{_source(gguf)}: tokenizer.ggml.{key} has {len(values)} values "
                            f"but there are {n} tokens; the GGUF is damaged")
    get_list(gguf, "tokenizer.ggml.merges", lambda t: isinstance(t, str), "strings")
    for kind in _SPECIAL_IDS:
        # out of range is llama.cpp's warning and default; a wrong type is damage
        get_int(gguf, f"tokenizer.ggml.{kind}_token_id")
    for key in ("add_bos_token", "add_eos_token", "add_space_prefix"):
        get_bool(gguf, "tokenizer.ggml." + key)
    get_str(gguf, "tokenizer.chat_template")


def _is_number_or_nan(v):
    return type(v) in (int, float)


# ---------------------------------------------------------------- tensor shapes

def expected_shapes(config, n_vocab):
    """{tensor name: ggml shape} for every tensor the model may read, from the
    hyperparameters alone. A name with several allowed shapes maps to a tuple of them."""
    c = config
    q_dim, kv_dim = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    shapes = {
        "token_embd.weight": (c.dim, n_vocab),
        "output_norm.weight": (c.dim,),
        "output.weight": (c.dim, n_vocab),
        "rope_freqs.weight": (c.n_rot // 2,),
        "rope_factors_long.weight": (c.n_rot // 2,),
        "rope_factors_short.weight": (c.n_rot // 2,),
    }
    for i in range(c.n_layers):
        p = f"blk.{i}."
        shapes.update({
            p + "attn_norm.weight": (c.dim,),
            p + "attn_q.weight": (c.dim, q_dim),
            p + "attn_k.weight": (c.dim, kv_dim),
            p + "attn_v.weight": (c.dim, kv_dim),
            p + "attn_qkv.weight": (c.dim, q_dim + 2 * kv_dim),
            p + "attn_q.bias": (q_dim,),
            p + "attn_k.bias": (kv_dim,),
            p + "attn_v.bias": (kv_dim,),
            p + "attn_q_norm.weight": (c.head_dim,),
            p + "attn_k_norm.weight": (c.head_dim,),
            p + "attn_output.weight": (q_dim, c.dim),
            p + "post_attention_norm.weight": (c.dim,),
            p + "ffn_norm.weight": (c.dim,),
            p + "ffn_gate.weight": (c.dim, c.ffn_dim),
            # with ffn_gate, the up matrix; without, gate|up fused (phi3)
            p + "ffn_up.weight": ((c.dim, c.ffn_dim), (c.dim, 2 * c.ffn_dim)),
            p + "ffn_down.weight": (c.ffn_dim, c.dim),
            p + "post_ffw_norm.weight": (c.dim,),
        })
    return shapes


def required_tensors(config, present):
    """The tensors a forward pass cannot do without (q/k/v either apart or fused)."""
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(config.n_layers):
        p = f"blk.{i}."
        qkv = [p + "attn_qkv.weight"] if p + "attn_qkv.weight" in present else \
            [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
        names += [p + "attn_norm.weight"] + qkv + [p + "attn_output.weight", p + "ffn_norm.weight",
                                                  p + "ffn_up.weight", p + "ffn_down.weight"]
    return names


def _squeeze(shape):
    """ggml shapes may carry trailing 1s ([n, 1] for a vector)."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def check_tensor_shapes(gguf, config, n_vocab):
    """Every tensor the model reads has the shape its hyperparameters imply, a type
    the kernels compute with, and its bytes inside the file."""
    gguf.check_tensors()
    if config.vocab_size != n_vocab:
        raise UserError(f"{gguf.source}: {config.arch}.vocab_size is {config.vocab_size} but "
                        f"the vocabulary has {n_vocab} tokens; the GGUF is damaged")
    shapes = expected_shapes(config, n_vocab)
    for name, info in gguf.tensors.items():
        want = shapes.get(name)
        if want is None:
            continue   # not read by the model (the reader checked its extent)
        allowed = want if isinstance(want[0], tuple) else (want,)
        if _squeeze(info.shape) not in allowed:
            shown = " or ".join(str(list(a)) for a in allowed)
            raise UserError(f"{gguf.source}: tensor {name!r} has shape {list(info.shape)}, "
                            f"but the model's hyperparameters need {shown}; the GGUF is "
                            "damaged or its metadata does not match its weights")
    for i in range(config.n_layers):
        p = f"blk.{i}."
        for group in (("attn_q.bias", "attn_k.bias", "attn_v.bias"),
                      ("attn_q_norm.weight", "attn_k_norm.weight")):
            have = [p + n in gguf.tensors for n in group]
            if any(have) and not all(have):
                raise UserError(f"{gguf.source}: layer {i} has only some of "
                                f"{', '.join(group)}; the GGUF is damaged")
        up = gguf.tensors.get(p + "ffn_up.weight")
        if up is not None and p + "ffn_gate.weight" in gguf.tensors \
                and _squeeze(up.shape) != (config.dim, config.ffn_dim):
            raise UserError(f"{gguf.source}: {p}ffn_up.weight has shape {list(up.shape)}; "
                            f"beside ffn_gate it must be {[config.dim, config.ffn_dim]}")
    for name in required_tensors(config, gguf.tensors):
        if name not in gguf.tensors:
            raise UserError(f"{gguf.source}: tensor {name!r} is missing; "
                            f"the GGUF is not a complete {config.arch} model")
    for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
        if name in gguf.tensors and gguf.tensors[name].type != ggml_types.F32:
            raise UserError(f"{gguf.source}: {name} must be F32")
