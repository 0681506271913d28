"""The server's state, shared by all request threads: the engine once the model is
loaded, the chat format, the sampling defaults, the API keys and the metrics."""

import os
import sys
import time

from runtime.errors import UserError
from runtime.server.engine import Engine
from runtime.server.errors import ApiError
from runtime.server.metrics import Metrics
from runtime.faults import ModelGuard


class App:
    """State shared by all request threads."""

    def __init__(self, args):
        self.args = args
        self.api_keys = []
        self.cors = args.cors
        self.timeout = args.timeout
        self.engine = None          # set once the model is loaded
        self.chat_format = None
        self.model_name = "model"
        self.metrics = Metrics()
        self.load_error = None
        self.guard = None           # the model file's SIGBUS guard (runtime/faults.py)
        self.listener = None        # the serving core (connections.py), for /metrics
        self.draining = False       # SIGTERM: finishing the requests in flight, taking no new ones
        self.chat_error = None
        self.created = int(time.time())
        self.verbose = args.verbose
        self.default_grammar = getattr(args, "grammar_text", None)    # --grammar(-file)
        self.n_predict = args.n_predict if args.n_predict is not None else -1
        # llama-server's --alias takes several names; the first in sorted order is the id.
        self.aliases = sorted({a.strip() for a in (args.alias or "").split(",") if a.strip()})
        self.tags = sorted({t.strip() for t in (args.tags or "").split(",") if t.strip()})
        self.model_path = ""
        # -ub: the prompt goes through the model this many tokens at a time.
        self.batch_size = min(args.batch_size, args.ubatch_size or args.batch_size)
        self.slot_save_path = args.slot_save_path
        self.pooling = args.pooling or "mean"
        self.reasoning = args.reasoning

    def load(self, gguf):
        """Build tokenizer, model, slots; warm the weights so the first request is quick."""
        from runtime.chat import load_chat_format
        from runtime.loader import load_session
        from runtime.sampling import SamplingParams
        args = self.args
        loaded = load_session(gguf, backend=args.backend, threads=args.threads,
                              n_ctx=args.ctx_size, batch_size=self.batch_size)
        model, tokenizer = loaded.model, loaded.tokenizer
        if self.default_grammar:
            from runtime.constraint import GrammarError, from_grammar
            try:
                from_grammar(tokenizer, self.default_grammar)   # token references need the vocabulary
            except GrammarError as e:
                raise UserError(f"--grammar: {e}") from None
        self.guard = ModelGuard(getattr(model.backend, "lib", None), gguf, exit_on_fault=False)
        try:
            self.chat_format = load_chat_format(gguf, args.chat_template_file or args.chat_template)
        except UserError as e:
            # Completions still work; chat requests say why they cannot.
            self.chat_error = str(e)
            print(f"warning: {e}", file=sys.stderr, flush=True)
        self.defaults = SamplingParams.from_flags(args)
        n_slots = max(1, args.parallel)
        # llama-server's split: each slot gets -c / -np, unless --kv-unified.
        slot_ctx = model.n_ctx if args.kv_unified else max(1, model.n_ctx // n_slots)
        engine = Engine(model, tokenizer, n_slots, max(0, args.queue),
                        batch_size=self.batch_size, slot_ctx=slot_ctx)
        warm = engine.slots[0].session
        warm.eval([tokenizer.bos_id if tokenizer.bos_id is not None else 0])
        warm.reset()
        name = gguf.get("general.name") or os.path.basename(str(gguf.source))
        self.model_name = self.aliases[0] if self.aliases else str(name)
        self.model_path = str(gguf.source)
        self.engine = engine

    def model_lost(self):
        return self.guard is not None and self.guard.lost()

    def ready(self):
        if self.load_error is not None:
            raise ApiError(503, f"the model failed to load: {self.load_error}")
        if self.draining:
            raise ApiError(503, "the server is shutting down", code="unavailable")
        if self.model_lost():
            raise ApiError(503, self.guard.message(), code="model_lost")
        if self.engine is None:
            raise ApiError(503, "Loading model", code="loading")
        return self.engine
