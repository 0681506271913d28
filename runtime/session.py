"""A conversation with a model: the tokens in its KV cache, and generation.

The session remembers which tokens the cache holds, so a new request that starts
with the same tokens (the next chat turn, a retried prompt) only computes the rest.
"""

import time

from runtime.errors import UserError
from runtime.sampling import Biased, Sampler, as_logits, find_stop, partial_stop_suffix


MIN_PROMPT_CHUNK = 2


def prompt_chunks(tokens, batch_size):
    """`tokens` in batches of at most `batch_size`, none of one token unless there is
    only one. The kernels compute a row the same in any batch of two or more tokens,
    but a lone token takes the matrix x vector path, whose sums round differently;
    prompt rows then come out the same whatever the batch size or the cached prefix
    (greedy output does not change once the prompt comes from the cache)."""
    size = max(MIN_PROMPT_CHUNK, batch_size)
    chunks = [tokens[i:i + size] for i in range(0, len(tokens), size)]
    if len(chunks) > 1 and len(chunks[-1]) < MIN_PROMPT_CHUNK:
        if len(chunks[-2]) > MIN_PROMPT_CHUNK:      # borrow a token from the one before
            chunks[-2], chunks[-1] = chunks[-2][:-1], chunks[-2][-1:] + chunks[-1]
        else:                                       # batch size 2: the last one takes 3
            chunks[-2:] = [chunks[-2] + chunks[-1]]
    return chunks


class Timings:
    def __init__(self):
        self.prompt_tokens = 0      # tokens computed for the prompt (after cache reuse)
        self.prompt_seconds = 0.0
        self.generated_tokens = 0
        self.generate_seconds = 0.0
        self.reused_tokens = 0      # prompt tokens found already in the cache

    @property
    def prompt_per_second(self):
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generate_per_second(self):
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0


def model_logprobs(logits, token, n):
    """(log-probability of `token`, [(logprob, id)] of the n most likely) under the
    softmax of the raw logits."""
    logits = as_logits(logits)
    lse = logits.logsumexp()
    return logits[token] - lse, [(v - lse, t) for v, t in logits.top(n)]


def sampler_probs(sampler, token, n):
    """(probability of `token`, [(prob, id)] of the n most likely) in the distribution
    the sampler last drew from."""
    probs = sampler.probs
    mine = next((p for p, t in probs if t == token), 0.0)
    return mine, [(p, t) for p, t in probs[:n] if p > 0.0]


class Session:
    def __init__(self, model, tokenizer, batch_size=512):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, batch_size)
        self.tokens = []            # what the KV cache holds, position by position
        self.last_logits = None
        self.timings = Timings()

    @property
    def n_ctx(self):
        return self.model.n_ctx

    def reset(self):
        self.tokens = []
        self.last_logits = None

    def truncate(self, n):
        """Forget cache positions n.. (they will be overwritten)."""
        if n < len(self.tokens):
            self.tokens = self.tokens[:n]
            self.last_logits = None

    def eval(self, new_tokens, all_logits=False, on_chunk=None):
        """Append `new_tokens` to the cache; return the last row of logits (the
        backend's logits_row: indexable, with a fast top(k)),
        or, when `all_logits`, every row as backend activations.
        `on_chunk()` is called after each batch is in the cache."""
        if len(self.tokens) + len(new_tokens) > self.n_ctx:
            raise UserError(f"{len(self.tokens) + len(new_tokens)} tokens do not fit in the "
                            f"context of {self.n_ctx}; raise -c or shorten the prompt")
        if all_logits:
            # One batch, so the logits come back as one matrix (perplexity chunks).
            logits = self.model.forward(new_tokens, len(self.tokens), last_only=False)
            self.tokens.extend(new_tokens)
            self.last_logits = None
            return logits
        last = None
        for chunk in prompt_chunks(new_tokens, self.batch_size):
            last = self.model.forward(chunk, len(self.tokens), last_only=True)
            self.tokens.extend(chunk)
            if on_chunk is not None:
                on_chunk()
        if last is not None:
            self.last_logits = self.model.backend.logits_row(last, 0)
        return self.last_logits

    def prefill(self, prompt_tokens, on_progress=None):
        """Make the cache hold exactly `prompt_tokens`, computing only what is new.
        `on_progress(total, cached, processed)` is called before the first batch
        (processed == cached) and after each one (llama-server's prompt_progress);
        self.timings counts the prompt so far when it is called."""
        if not prompt_tokens:
            raise UserError("the prompt is empty; give some text with -p or -f")
        if len(prompt_tokens) > self.n_ctx:
            raise UserError(f"the prompt is {len(prompt_tokens)} tokens but the context is "
                            f"{self.n_ctx}; raise -c or shorten the prompt")
        common = 0
        for a, b in zip(self.tokens, prompt_tokens):
            if a != b:
                break
            common += 1
        # Keep tokens to compute, so we have fresh logits: at least two, since every
        # row of a prompt is computed in a batch of two or more (see prompt_chunks), and
        # a cached prompt must give the numbers a fresh one gives.
        common = min(common, max(0, len(prompt_tokens) - MIN_PROMPT_CHUNK))
        self.truncate(common)
        self.timings = Timings()
        self.timings.reused_tokens = common
        t0 = time.perf_counter()

        def batch_done():
            self.timings.prompt_tokens = len(self.tokens) - common
            self.timings.prompt_seconds = time.perf_counter() - t0
            if on_progress is not None:
                on_progress(len(prompt_tokens), common, len(self.tokens))

        if on_progress is not None:
            on_progress(len(prompt_tokens), common, common)
        self.eval(prompt_tokens[common:], on_chunk=batch_done)
        return self.last_logits

    def generate(self, prompt_tokens, params, n_predict=-1, stops=(), should_stop=None,
                 constraint=None, n_probs=0, post_sampling=False, shown_tokens=(),
                 on_progress=None):
        """Yield text pieces of the continuation of `prompt_tokens`.

        Stops at an end-of-generation token, a stop string (not included in the output),
        `n_predict` tokens (-1: until the context is full), or when `should_stop()` says so.
        `self.finish_reason` is "stop" or "length" afterwards; `self.generated` the ids.
        A `constraint` (runtime/constraint.py) picks tokens instead of the plain
        sampler and ends generation when its output is complete. params.logit_bias is
        added to the logits the sampler and the constraint see.
        With `n_probs` > 0, `self.probs[i]` describes generated token i as (its
        log-probability, [(logprob, id)] of the n_probs most likely) under the model's
        own distribution, or with `post_sampling` as (its probability, [(prob, id)]) of
        the distribution the sampler finally drew from (llama.cpp's n_probs and
        post_sampling_probs).
        `shown_tokens`: control tokens whose text is part of the output (tool-call
        markers a parser reads). `on_progress`: see prefill.
        """
        from runtime.tokenizer import StreamDecoder

        sampler = Sampler(params)
        sampler.keep_probs = n_probs > 0 and post_sampling
        self.generated = []
        self.probs = []
        logits = self.prefill(prompt_tokens, on_progress)
        decoder = StreamDecoder(self.tokenizer, shown=shown_tokens)
        eog = self.tokenizer.eog_ids
        bias = params.logit_bias
        self.finish_reason = "length"
        self.stop_word = None       # the stop string that ended it, if one did
        self.last_token_eog = False # whether an end-of-generation token ended it
        pending = ""            # text held back: it might be the start of a stop string
        t0 = time.perf_counter()
        stopped_by_string = False
        try:
            while n_predict < 0 or len(self.generated) < n_predict:
                if should_stop is not None and should_stop():
                    self.finish_reason = "stop"
                    break
                view = Biased(logits, bias) if bias else logits
                if constraint is None:
                    token = sampler.sample(view, self.tokens)
                else:
                    token = constraint.sample(sampler, view, self.tokens)
                if token in eog:
                    self.finish_reason = "stop"
                    self.last_token_eog = True
                    break
                if n_probs > 0:
                    self.probs.append(sampler_probs(sampler, token, n_probs) if post_sampling
                                      else model_logprobs(logits, token, n_probs))
                self.generated.append(token)
                complete = constraint is not None and constraint.advance(token)
                pending += decoder.feed(token)
                cut = find_stop(pending, stops) if stops else -1
                if cut >= 0:
                    self.stop_word = _stop_at(pending, cut, stops)
                    pending = pending[:cut]
                    stopped_by_string = True
                    self.finish_reason = "stop"
                    break
                hold = partial_stop_suffix(pending, stops) if stops else 0
                ready, pending = pending[:len(pending) - hold], pending[len(pending) - hold:]
                if ready:
                    yield ready
                if complete:
                    self.finish_reason = "stop"
                    break
                done = 0 <= n_predict <= len(self.generated)
                if done or len(self.tokens) >= self.n_ctx:
                    break
                logits = self.eval([token])
            tail = pending if stopped_by_string else pending + decoder.flush()
            cut = find_stop(tail, stops) if stops else -1
            if cut >= 0:
                self.stop_word = _stop_at(tail, cut, stops)
                tail = tail[:cut]
                self.finish_reason = "stop"
            if tail:
                yield tail
        finally:
            self.timings.generated_tokens = len(self.generated)
            self.timings.generate_seconds = time.perf_counter() - t0


def _stop_at(text, cut, stops):
    """The stop string found at text[cut:]."""
    return next((s for s in stops if text.startswith(s, cut)), "")
