"""Rotary position embedding parameters, shared by the model and every backend (stdlib only)."""


class RopeParams:
    """How a model rotates queries and keys.

    n_rot dims of each head are rotated (the rest pass through). `neox` pairs
    dimension i with i + n_rot/2 (GPT-NeoX layout); otherwise adjacent pairs (2i, 2i+1).
    The angle for pair i at position p is p * freq_scale * base^(-2i/n_rot) / factor[i],
    where factors come from a `rope_freqs` tensor (Llama 3.1 style scaling) or from
    Phi-3's long/short factor tensors (LongRoPE) when present.

    `attn_factor` multiplies cos and sin, so every rotated value: like llama.cpp
    (ggml's rope takes it as `attn_factor`), the rotated part of q and k grows by it and
    the attention logits by its square. LongRoPE models store it in
    `{arch}.rope.scaling.attn_factor`; it is 1 for everyone else.
    """

    def __init__(self, n_rot, freq_base=10000.0, freq_scale=1.0, neox=False, freq_factors=None,
                 attn_factor=1.0):
        self.n_rot = n_rot
        self.freq_base = freq_base
        self.freq_scale = freq_scale
        self.neox = neox
        self.freq_factors = freq_factors  # list of n_rot/2 floats, or None
        self.attn_factor = attn_factor

    def inv_freq(self):
        half = self.n_rot // 2
        inv = [self.freq_scale * self.freq_base ** (-2.0 * i / self.n_rot) for i in range(half)]
        if self.freq_factors is not None:
            inv = [f / c for f, c in zip(inv, self.freq_factors)]
        return inv
