"""From a GGUF to a running model: tokenizer, backend, model and session, built in
one place for the command line, the server and --bench.

The thread count is decided here and only here: by default every CPU this process
may use (its affinity mask, which containers and `taskset` narrow, not the machine's
count); more than that is capped, since extra threads would only take turns.
"""

import os
import sys

from runtime.errors import UserError


def usable_cpus():
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def decide_threads(requested):
    """Threads for the kernels: `requested` (0: all usable CPUs), at most the usable CPUs."""
    usable = usable_cpus()
    if requested <= 0:
        return usable
    if requested > usable:
        print(f"note: -t {requested} capped to {usable}, the CPUs this process may use",
              file=sys.stderr)
        return usable
    return requested


def open_gguf(model_path=None, model_region=None):
    """The parsed GGUF: a region (path, offset, length) of the bundle, or a file."""
    from runtime.gguf import GGUFFile
    if model_region is not None:
        path, offset, length = model_region
        return GGUFFile.open(path, offset, length)
    if not model_path:
        raise UserError("no model given; pass -m MODEL.gguf")
    return GGUFFile.open(model_path)


def check_model(gguf):
    """Every check the runtime makes before it computes (runtime/validate.py), without
    loading a backend: for build.py, which must refuse what a run would refuse.
    Returns the Config."""
    from runtime import validate
    from runtime.model import Config
    from runtime.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_gguf(gguf)
    config = Config(gguf)
    validate.check_tensor_shapes(gguf, config, tokenizer.n_vocab)
    return config


def load_backend(name, n_threads):
    """The C kernels when they load here; the NumPy oracle as the fallback."""
    reason = "not tried (--backend numpy)"
    if name in ("auto", "c"):
        try:
            from runtime.backend_c import CBackend
            return CBackend(n_threads=n_threads)
        except (ImportError, OSError, UserError) as e:
            if name == "c":
                raise UserError(f"the C kernels cannot be used here: {e}") from None
            reason = str(e)
    try:
        from runtime.backend_numpy import NumpyBackend
    except ImportError:
        raise UserError(f"no compute backend: the C kernels failed ({reason}) and numpy is "
                        "not installed; build the kernels with `python kernels/build.py`") from None
    return NumpyBackend(n_threads=n_threads)


def check_context_fits(config, n_ctx):
    """Refuse a context whose KV cache (keys and values, f16, every layer) exceeds memory."""
    need = 2 * 2 * config.n_layers * n_ctx * config.n_kv_heads * config.head_dim
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise UserError(f"-c {n_ctx} needs a {need / 2**30:.1f} GiB KV cache but this machine "
                        f"has {have / 2**30:.1f} GiB of memory; choose a smaller -c (the model "
                        f"was trained on {config.n_ctx_train} tokens)")


def load_session(gguf, backend="auto", threads=0, n_ctx=0, batch_size=512, verbose=False):
    """A Session over `gguf`: its tokenizer, the model on the chosen backend with
    `threads` threads (0: all usable CPUs) and a context of `n_ctx` tokens (0: the
    model's, capped). session.model.backend.n_threads is the thread count used."""
    from runtime.model import Config, Model
    from runtime.session import Session
    from runtime.tokenizer import Tokenizer
    config = Config(gguf)  # unsupported architectures fail before any heavy work
    check_context_fits(config, n_ctx or min(config.n_ctx_train, 4096))
    tokenizer = Tokenizer.from_gguf(gguf)
    compute = load_backend(backend, decide_threads(threads))
    if verbose:
        print(f"backend: {compute.describe()}", file=sys.stderr)
    model = Model(gguf, compute, n_ctx=n_ctx)
    return Session(model, tokenizer, batch_size=batch_size)
