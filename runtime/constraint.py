"""Constrained decoding: one engine for GBNF grammars, JSON schemas, response_format
and tool arguments.

    from_grammar(tokenizer, gbnf_text) -> Constraint
    from_schema(tokenizer, schema)     -> Constraint   (schema: a parsed JSON schema)

A Constraint is what Session.generate takes as `constraint`: `sample(sampler, logits,
history) -> token` and `advance(token) -> True when the output is complete and
nothing may follow`. One Constraint per generation; the compiled automaton behind it
is shared (an LRU of recent grammars), so a repeated schema compiles once.

Sampling stays cheap: the sampler first picks as if unconstrained, and only when the
grammar refuses that token are the allowed tokens worked out -- among the model's
best candidates first (the backend's top(k)), and only when too few of those fit,
for the whole vocabulary (a walk of the sorted token bytes that drops every token
under a dead prefix at once, cached per automaton state). llama.cpp samples the
same way (sample, check, resample with the grammar applied).

Errors: GrammarError / SchemaError (ValueError) for malformed input; their
...LimitError subclasses when the input is well formed but too large or too slow to
compile (servers answer those with 413).
"""

import threading
import time
from collections import OrderedDict

from runtime.grammar import (Automaton, Grammar, GrammarError, GrammarLimitError,
                             allowed_tokens, vocabulary)
from runtime.json_schema import SchemaError, SchemaLimitError, to_grammar

COMPILE_SECONDS = 2.0       # longest a grammar may take to compile
CANDIDATES = 64             # best-ranked tokens checked before the whole vocabulary
SMALL_SET = 4096            # allowed sets up to this size are ranked directly
CACHED_GRAMMARS = 16

__all__ = ["Constraint", "from_grammar", "from_schema", "GrammarError", "GrammarLimitError",
           "SchemaError", "SchemaLimitError", "is_limit_error"]

_cache = OrderedDict()
_cache_lock = threading.Lock()


def is_limit_error(error):
    """Whether a compile error means "too large" (413) rather than "malformed" (400)."""
    return isinstance(error, (GrammarLimitError, SchemaLimitError))


def automaton(text, seconds=COMPILE_SECONDS):
    """The compiled automaton of GBNF `text`, from the cache when seen recently."""
    with _cache_lock:
        hit = _cache.get(text)
        if hit is not None:
            _cache.move_to_end(text)
            return hit
    deadline = time.monotonic() + seconds
    built = Automaton(Grammar(text, deadline))
    with _cache_lock:
        _cache[text] = built
        while len(_cache) > CACHED_GRAMMARS:
            _cache.popitem(last=False)
    return built


def from_grammar(tokenizer, text, seconds=COMPILE_SECONDS):
    """A Constraint for GBNF `text`. Raises GrammarError (GrammarLimitError: too large)."""
    return Constraint(tokenizer, automaton(text, seconds))


def from_schema(tokenizer, schema, seconds=COMPILE_SECONDS):
    """A Constraint for a JSON schema (a dict, or True for any JSON value). Raises
    SchemaError for a malformed schema, GrammarError/...LimitError when too large."""
    return from_grammar(tokenizer, to_grammar(schema), seconds)


class Restricted:
    """A logits row seen through a set of allowed token ids (others are -inf)."""

    def __init__(self, logits, allowed):
        self.logits = logits
        self.allowed = allowed

    def __len__(self):
        return len(self.logits)

    def __getitem__(self, i):
        return self.logits[i] if i in self.allowed else float("-inf")

    def __iter__(self):
        return (self[i] for i in range(len(self.logits)))

    def top(self, k):
        if len(self.allowed) <= SMALL_SET:
            ranked = sorted(((self.logits[t], t) for t in self.allowed),
                            key=lambda vt: (-vt[0], vt[1]))
            return ranked[:k]
        want = max(k, 1) * 4
        n = len(self.logits)
        while True:
            best = self.logits.top(min(want, n))
            picked = [(v, t) for v, t in best if t in self.allowed]
            if len(picked) >= k or want >= n:
                return picked[:k]
            want *= 4


class Constraint:
    """Decoding held to a grammar: see the module docstring.

    Token references (<[id]>, <text>, negated with '!') match whole tokens by id: a
    state's `waiting` stacks rest on one, and only a token boundary passes it."""

    def __init__(self, tokenizer, automaton):
        self.automaton = automaton
        self.vocab = vocabulary(tokenizer)
        self.state = automaton.start
        self.token_ids = self.vocab.resolve(automaton.grammar) if automaton.grammar.token_refs \
            else []

    def _passes(self, waiting, token):
        """The stacks of `waiting` whose token reference `token` matches."""
        if not self.vocab.matchable(token):
            return []
        ids = self.token_ids
        return [st for st, negated, ref in waiting if (ids[ref] == token) != negated]

    def fits(self, token):
        """Whether `token` may come next."""
        state = self.state
        if token in self.vocab.eog:
            return state.accepting
        if state.waiting and self._passes(state.waiting, token):
            return True
        piece = self.vocab.piece.get(token)
        if piece is None:
            return False
        return bool(self.automaton.feed(state, piece).stacks)

    def allowed(self):
        """Every token that may come next (a frozenset of ids)."""
        out = allowed_tokens(self.automaton, self.vocab, self.state)
        if self.state.waiting:
            extra = set()
            for _st, negated, ref in self.state.waiting:
                token = self.token_ids[ref]
                if negated:
                    extra |= self.vocab.any_token() - {token}
                elif self.vocab.matchable(token):
                    extra.add(token)
            out = out | extra
        return out

    def sample(self, sampler, logits, history):
        token = sampler.sample(logits, history)
        if self.fits(token):
            return token
        p = sampler.params
        need = 1 if p.temperature <= 0 else (min(p.top_k, CANDIDATES) if p.top_k > 0
                                             else CANDIDATES)
        from runtime.sampling import as_logits
        best = [t for _, t in as_logits(logits).top(CANDIDATES) if self.fits(t)]
        allowed = frozenset(best) if len(best) >= need else self.allowed()
        if not allowed:
            # Nothing in the vocabulary continues the grammar: end the output here.
            return min(self.vocab.eog) if self.vocab.eog else token
        return sampler.sample(Restricted(logits, allowed), history)

    def advance(self, token):
        """Take the chosen token; True when the output is complete (nothing may follow)."""
        state = self.state
        piece = self.vocab.piece.get(token)
        if state.waiting:
            passed = self._passes(state.waiting, token)
            if passed:
                fed = self.automaton.feed(state, piece) if piece is not None else None
                self.state = self.automaton.after_token(fed, passed)
                return self.state.final or not self.state.stacks
        if piece is None:
            return True
        self.state = self.automaton.feed(state, piece)
        return self.state.final or not self.state.stacks

    @property
    def complete(self):
        """The output so far is a whole sentence of the grammar."""
        return self.state.accepting
