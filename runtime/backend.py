"""The backend interface the model is written on, and the numerics every backend
must reproduce. Two implement it: backend_c (our C kernels, the hot path) and
backend_numpy (the oracle the C backend is tested against).

A backend owns two kinds of values:

- weight handles, from `weight(gguf, name)`: a tensor of the GGUF, still quantized,
  read in place from the map. `handle.shape` is the ggml shape (shape[0] is the row
  length), `handle.type` the ggml type id.
- activations: float32 matrices [rows, cols], one row per token. Ops that say
  "in place" modify their first argument and return it.

Rows carry their positions: rope and attention take `positions` (row i sits at
positions[i]) and attention one KV cache per row, so a prompt (one cache, positions
pos0..) and a decoding step of several sequences (a cache and a position each) are
the same call.

Numerics every backend must reproduce (they are llama.cpp's, and greedy decoding
matches llama.cpp token for token only with them; see backend_numpy's
quantize_activations and attention):
- matmul quantizes the activations first, per weight type: Q8_0-style blocks of 32
  (f16 scale, roundf) for Q4_0/Q5_0/Q8_0, Q8_1-style for Q4_1/Q5_1, Q8_K-style blocks
  of 256 (f32 scale = max/-127 of the signed extreme, round-half-even) for K-quants,
  f16 for F16 weights, bf16 for BF16, none for F32;
- rope's cos and sin are computed in double, rounded to f32, then times the
  RopeParams' attn_factor in f32 (as ggml does);
- the KV cache holds f16; attention rounds queries to f16, computes f32 scores,
  and runs an online softmax over keys in order, accumulating values in an f16
  vector (scale by exp(m_old - m_new) rounded to f16, then add v*w rounded to f16).
"""

from abc import ABC, abstractmethod


class Backend(ABC):
    """What the model, the session, the sampler and the server call. `name` is a short
    tag ("c", "numpy"); `n_threads` the threads its kernels use."""

    name = "?"
    n_threads = 1

    @abstractmethod
    def describe(self):
        """One line: what computes (for -v and --info)."""

    # ---- weights and activations

    @abstractmethod
    def weight(self, gguf, name):
        """The handle of GGUF tensor `name`, read in place."""

    @abstractmethod
    def embed(self, w, ids):
        """X[len(ids), w.shape[0]]: rows `ids` of w, dequantized."""

    @abstractmethod
    def take_rows(self, x, start, stop):
        """X[start:stop] (may share memory with x)."""

    @abstractmethod
    def take_cols(self, x, start, stop):
        """Columns start..stop-1 of every row (splits fused q|k|v and gate|up outputs);
        may share memory with x."""

    # ---- ops

    @abstractmethod
    def rmsnorm(self, x, w, eps):
        """Every len(w)-chunk of each row normalised, times w (F32); w=None: no weight."""

    @abstractmethod
    def matmul(self, x, w):
        """Y[rows, w.shape[1]] = X @ W.T, W dequantized, X quantized per W's type."""

    @abstractmethod
    def add(self, x, y):
        """In place x += y."""

    @abstractmethod
    def add_bias(self, x, b):
        """In place: b (an F32 weight) added to every row."""

    @abstractmethod
    def scale(self, x, s):
        """In place x *= s."""

    @abstractmethod
    def rope(self, x, positions, n_heads, head_dim, rope):
        """In place: rotate the first rope.n_rot dims of each head of row i for
        position positions[i]; `rope` is a RopeParams."""

    @abstractmethod
    def kv_cache(self, n_layers, n_ctx, kv_dim):
        """A cache of keys and values (f16) for all layers."""

    @abstractmethod
    def attention(self, q, k, v, caches, layer, positions, n_heads, n_kv_heads, head_dim,
                  scale, window=0):
        """O[rows, n_heads*head_dim]: stores row i's key and value at positions[i] of
        caches[i] (this layer), then row i's query attends causally over positions
        0..positions[i] of its cache (only the last `window` when window > 0)."""

    @abstractmethod
    def swiglu(self, g, u):
        """silu(g) * u."""

    @abstractmethod
    def geglu(self, g, u):
        """gelu_tanh(g) * u."""

    # ---- reading results

    @abstractmethod
    def to_floats(self, x):
        """A list of rows, each a sequence of floats (embeddings, tests, tools)."""

    @abstractmethod
    def logits_row(self, x, row):
        """Logits for sampling: len, [i], iteration, top(k) -> [(logit, id)] of
        the k largest, largest first, ties to the lower id, and logsumexp() (in
        double; log-probabilities are x[i] minus it)."""

    @abstractmethod
    def logprobs_rows(self, x, targets):
        """[log softmax(row i)[targets[i]]] (perplexity)."""
