"""Choosing the next token from logits, in llama.cpp's default order.

penalties -> top-k -> top-p -> min-p -> temperature -> draw. With temperature <= 0
the choice is the argmax (after penalties). Everything is pure Python over the
vocabulary's logits; to keep that cheap, only the top candidates are materialised:
penalties only touch recently seen tokens, so the top-k after penalties always lies
in (raw top-(k + #penalised)) plus the penalised tokens themselves.
"""

import heapq
import math
import random


class ListLogits:
    """Logits held as a Python sequence (tests, masked copies). Backends hand out their
    own kind with the same three methods, whose `top` runs in C or NumPy."""

    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        return self.values[i]

    def __iter__(self):
        return iter(self.values)

    def top(self, k):
        """[(logit, id)] of the k largest, largest first, ties to the lower id."""
        ids = heapq.nlargest(k, range(len(self.values)), key=self.values.__getitem__)
        return sorted(((self.values[i], i) for i in ids), key=lambda vt: (-vt[0], vt[1]))

    def logsumexp(self):
        """log(sum(exp(logits))): log softmax(x)[i] is x[i] minus this."""
        top = max(self.values)
        return top + math.log(sum(math.exp(v - top) for v in self.values))


class Biased:
    """A logits row plus a bias per token (OpenAI's and llama.cpp's `logit_bias`;
    -inf bans), without copying the vocabulary: top(k) asks the row for k more than
    the biased tokens and re-ranks them with the biased ones."""

    def __init__(self, logits, bias):
        self.logits = as_logits(logits)
        self.bias = bias

    def __len__(self):
        return len(self.logits)

    def __getitem__(self, i):
        return self.logits[i] + self.bias.get(i, 0.0)

    def __iter__(self):
        return (self[i] for i in range(len(self.logits)))

    def top(self, k):
        ids = {t for _, t in self.logits.top(k + len(self.bias))} | set(self.bias)
        ranked = sorted(((self[t], t) for t in ids), key=lambda vt: (-vt[0], vt[1]))
        return [vt for vt in ranked if vt[0] != float("-inf")][:k]


def as_logits(values):
    """A logits row with top(k): a backend's row as it is, a plain sequence wrapped."""
    return values if hasattr(values, "top") else ListLogits(values)


class SamplingParams:
    def __init__(self, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
                 repeat_penalty=1.0, repeat_last_n=64, presence_penalty=0.0,
                 frequency_penalty=0.0, seed=None, logit_bias=None):
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.min_p = min_p
        self.repeat_penalty = repeat_penalty
        self.repeat_last_n = repeat_last_n
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.seed = seed
        self.logit_bias = logit_bias or {}     # token id -> added to its logit (-inf: banned)

    @classmethod
    def from_flags(cls, flags):
        """The command line's sampling flags (llama.cpp's names: temp, top_k, ...)."""
        return cls(temperature=flags.temp, top_k=flags.top_k, top_p=flags.top_p,
                   min_p=flags.min_p, repeat_penalty=flags.repeat_penalty,
                   repeat_last_n=flags.repeat_last_n, presence_penalty=flags.presence_penalty,
                   frequency_penalty=flags.frequency_penalty, seed=flags.seed)

    @property
    def penalised(self):
        return (self.repeat_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)


def mt19937(seed):
    """A random.Random whose 32-bit outputs are C++'s std::mt19937(seed): CPython's
    generator is the same Mersenne Twister, only seeded another way, so we give it the
    state std::mt19937's constructor makes (init_genrand) and the same seed draws the
    same numbers as llama.cpp."""
    mt = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        prev = mt[-1]
        mt.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, tuple(mt) + (624,), None))
    return rng


def uniform_canonical(rng):
    """std::uniform_real_distribution<double>(0, 1) over a 32-bit engine (libstdc++'s
    generate_canonical: two draws, low word first)."""
    low, high = rng.getrandbits(32), rng.getrandbits(32)
    return min((low + high * 4294967296.0) / 18446744073709551616.0, 1.0 - 2.0 ** -53)


class Sampler:
    def __init__(self, params):
        self.params = params
        seed = params.seed if params.seed is not None and 0 <= params.seed < 0xFFFFFFFF \
            else None       # -1 and llama.cpp's 0xFFFFFFFF: a random seed
        self.rng = mt19937(seed if seed is not None else random.SystemRandom().getrandbits(32))
        self.keep_probs = False     # record the final distribution of each draw in .probs
        self.probs = []             # [(probability, id)], most likely first (keep_probs)

    def _penalties(self, history):
        """token -> how often it occurs in the last repeat_last_n tokens."""
        p = self.params
        if not p.penalised or not history:
            return {}
        window = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else (
            history if p.repeat_last_n < 0 else [])
        counts = {}
        for t in window:
            counts[t] = counts.get(t, 0) + 1
        return counts

    def _apply(self, logit, count):
        p = self.params
        if p.repeat_penalty != 1.0:
            logit = logit / p.repeat_penalty if logit > 0 else logit * p.repeat_penalty
        return logit - count * p.frequency_penalty - p.presence_penalty

    def sample(self, logits, history=()):
        """Pick a token id. `logits`: a backend's logits row, or a sequence of floats."""
        p = self.params
        logits = as_logits(logits)
        n_vocab = len(logits)
        counts = self._penalties(history)
        k = p.top_k if 0 < p.top_k < n_vocab else n_vocab
        if p.temperature <= 0:
            k = 1

        # Candidates: enough raw top entries to survive any penalties, plus the penalised.
        if k + len(counts) >= n_vocab:
            candidate_ids = range(n_vocab)
        else:
            candidate_ids = {t for _, t in logits.top(k + len(counts))}
            candidate_ids |= {t for t in counts if 0 <= t < n_vocab}
        scored = []
        for t in candidate_ids:
            v = logits[t]
            if t in counts:
                v = self._apply(v, counts[t])
            scored.append((v, t))
        # Ties resolve to the lower id, as llama.cpp's sort of (logit, id) does.
        scored.sort(key=lambda vt: (-vt[0], vt[1]))
        scored = scored[:k]
        if p.temperature <= 0:
            if self.keep_probs:
                self.probs = [(1.0, scored[0][1])]
            return scored[0][1]

        # top-p and min-p see the untempered distribution, as in llama.cpp's chain.
        top = scored[0][0]
        weights = [math.exp(v - top) for v, _ in scored]
        total = sum(weights)
        if p.top_p < 1.0:
            cum, keep = 0.0, len(scored)
            for i, w in enumerate(weights):
                cum += w / total
                if cum >= p.top_p:
                    keep = i + 1
                    break
            scored, weights = scored[:keep], weights[:keep]
        if p.min_p > 0.0:
            floor = p.min_p  # relative to the top probability, which has weight 1
            keep = [i for i, w in enumerate(weights) if w >= floor] or [0]
            scored = [scored[i] for i in keep]

        # llama.cpp's dist sampler: one canonical draw (even for a single candidate, so
        # the stream stays aligned), the first token whose running sum reaches it.
        top = scored[0][0]
        weights = [math.exp((v - top) / p.temperature) for v, _ in scored]
        total = sum(weights)
        if self.keep_probs:
            self.probs = [(w / total, t) for w, (_, t) in zip(weights, scored)]
        target = total * uniform_canonical(self.rng)
        run = 0.0
        for (v, t), w in zip(scored, weights):
            run += w
            if run >= target:
                return t
        return scored[-1][1]


def find_stop(text, stops):
    """Index in `text` where the earliest stop string starts, or -1."""
    best = -1
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def partial_stop_suffix(text, stops):
    """Length of the longest end of `text` that could be the start of a stop string.

    Streaming holds those characters back until it knows they are not a stop."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                longest = max(longest, n)
                break
    return longest
