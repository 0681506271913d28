"""GBNF grammars (llama.cpp's grammar syntax) as a byte-level pushdown automaton.

A grammar is parsed into rules; each rule is a list of alternatives, each a sequence
of elements: a byte set (a 256-bit mask), or a reference to a rule. Characters and
character classes are Unicode code points in GBNF; they are compiled here into
UTF-8 byte sequences, so the automaton reads token bytes directly and a token that
ends inside a multi-byte character needs no special case.

Matching follows llama.cpp's stacks: the elements are laid out in one flat array,
a position is an index into it, and a parse is a stack of positions whose top is a
byte set. The state after some bytes is the set of stacks still alive (a frozenset,
interned as a State that caches its transitions and the tokens it allows). Repetition
is rewritten as llama.cpp does (S{m,n} -> m copies of S, then n-m nested optional
rules) and right recursion is a tail call, so stacks stay shallow.

Limits keep one request from buying unbounded work: the grammar's text size, the
number of compiled elements, the stacks a state may hold, and a deadline for
compiling (the caller gives it).
"""

import threading
import time
import weakref

MAX_REPETITION = 2000       # llama.cpp's bound on {m,n}
MAX_GRAMMAR_CHARS = 256 * 1024
MAX_ELEMENTS = 200_000      # compiled elements (bytes sets and references)
MAX_STACKS = 20_000         # live parses in one state: more means a pathological grammar
MAX_STATES = 50_000         # interned states per automaton before its caches are reset

_END, _BYTES, _REF = 0, 1, 2
_ALL_BYTES = (1 << 256) - 1


class GrammarError(ValueError):
    """A malformed grammar, with where: `pos` (character offset), line and column."""

    def __init__(self, message, text=None, pos=None):
        self.pos = pos
        if text is not None and pos is not None:
            line = text.count("\n", 0, pos) + 1
            col = pos - (text.rfind("\n", 0, pos) + 1) + 1
            message = f"{message} at line {line}, column {col}"
        super().__init__(message)


class GrammarLimitError(GrammarError):
    """The grammar is well formed but too large or too slow to compile here."""


# ---------------------------------------------------------------- UTF-8 ranges

def _utf8(cp):
    return chr(cp).encode("utf-8", "surrogatepass")


def utf8_sequences(lo, hi):
    """Code points lo..hi (surrogates skipped) as a list of sequences of byte ranges
    [(b0_lo, b0_hi), (b1_lo, b1_hi), ...]: each sequence matches a contiguous block."""
    out = []
    work = [(lo, hi)]
    while work:
        lo, hi = work.pop()
        if lo > hi:
            continue
        if lo <= 0xDFFF and hi >= 0xD800:
            work.append((lo, 0xD7FF))
            work.append((0xE000, hi))
            continue
        split = False
        for edge in (0x7F, 0x7FF, 0xFFFF):
            if lo <= edge < hi:
                work.append((lo, edge))
                work.append((edge + 1, hi))
                split = True
                break
        if split:
            continue
        if hi <= 0x7F:
            out.append(((lo, hi),))
            continue
        n = len(_utf8(lo))
        for i in range(1, n):
            mask = (1 << (6 * i)) - 1
            if lo & ~mask != hi & ~mask:
                if lo & mask:
                    work.append((lo, lo | mask))
                    work.append(((lo | mask) + 1, hi))
                    split = True
                    break
                if hi & mask != mask:
                    work.append((lo, (hi & ~mask) - 1))
                    work.append((hi & ~mask, hi))
                    split = True
                    break
        if split:
            continue
        out.append(tuple(zip(_utf8(lo), _utf8(hi))))
    return out


def _byte_mask(lo, hi):
    return ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)


def _normalise(ranges):
    """Sorted, merged code point ranges."""
    merged = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _complement(ranges):
    out, start = [], 0
    for lo, hi in _normalise(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = max(start, hi + 1)
    if start <= 0x10FFFF:
        out.append((start, 0x10FFFF))
    return out


# ---------------------------------------------------------------- parsing

def _is_word(c):
    return c.isascii() and (c.isalnum() or c == "-")


class _Parser:
    """GBNF text to rules: {name: [alternative]}, each alternative a list of
    ('bytes', mask) | ('ref', name) | ('class', ranges)."""

    def __init__(self, text, deadline):
        self.text = text
        self.deadline = deadline
        self.rules = {}
        self.order = []
        self.n_elements = 0
        self.fresh = 0
        self.refs = {}     # rule name -> first position it was referenced at

    def error(self, message, pos):
        return GrammarError(message, self.text, pos)

    def space(self, pos, newline_ok):
        t = self.text
        while pos < len(t):
            c = t[pos]
            if c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            elif c == "#":
                while pos < len(t) and t[pos] not in "\r\n":
                    pos += 1
            else:
                break
        return pos

    def name(self, pos):
        end = pos
        while end < len(self.text) and _is_word(self.text[end]):
            end += 1
        if end == pos:
            raise self.error("expecting a rule name", pos)
        return self.text[pos:end], end

    def integer(self, pos):
        end = pos
        while end < len(self.text) and self.text[end].isascii() and self.text[end].isdigit():
            end += 1
        if end == pos:
            raise self.error("expecting an integer", pos)
        return int(self.text[pos:end]), end

    def char(self, pos):
        """One (possibly escaped) character: (code point, next position)."""
        t = self.text
        if pos >= len(t):
            raise self.error("unexpected end of input", pos)
        if t[pos] != "\\":
            return ord(t[pos]), pos + 1
        if pos + 1 >= len(t):
            raise self.error("unexpected end of input", pos)
        e = t[pos + 1]
        simple = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
        if e in simple:
            return simple[e], pos + 2
        width = {"x": 2, "u": 4, "U": 8}.get(e)
        if width is None:
            raise self.error(f"unknown escape '\\{e}'", pos)
        digits = t[pos + 2:pos + 2 + width]
        if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.error(f"expecting {width} hex digits", pos + 2)
        cp = int(digits, 16)
        if cp > 0x10FFFF:
            raise self.error("code point beyond U+10FFFF", pos)
        return cp, pos + 2 + width

    def new_rule(self, base, alternatives):
        self.fresh += 1
        name = f"{base}_{self.fresh}"
        self.rules[name] = alternatives
        self.order.append(name)
        return name

    def count(self, n, pos):
        self.n_elements += n
        if self.n_elements > MAX_ELEMENTS:
            raise GrammarLimitError(f"the grammar is too large (more than {MAX_ELEMENTS} "
                                    "elements); simplify it", self.text, pos)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise GrammarLimitError("compiling the grammar took too long; simplify it",
                                    self.text, pos)

    def parse(self):
        pos = self.space(0, True)
        while pos < len(self.text):
            pos = self.rule(pos)
        if "root" not in self.rules:
            raise GrammarError("the grammar has no 'root' rule")
        for name, where in self.refs.items():
            if name not in self.rules:
                raise self.error(f"undefined rule '{name}'", where)
        return self.rules, self.order

    def rule(self, pos):
        name, pos = self.name(pos)
        pos = self.space(pos, False)
        if not self.text.startswith("::=", pos):
            raise self.error("expecting '::='", pos)
        pos = self.space(pos + 3, True)
        if name in self.rules:
            raise self.error(f"rule '{name}' is defined twice", pos)
        self.rules[name] = None           # reserve the name before any generated rules
        self.order.append(name)
        alternatives, pos = self.alternatives(pos, name, False)
        self.rules[name] = alternatives
        t = self.text
        if pos < len(t):
            if t[pos] == "\r":
                pos += 2 if t[pos + 1:pos + 2] == "\n" else 1
            elif t[pos] == "\n":
                pos += 1
            else:
                raise self.error("expecting a newline or the end", pos)
        return self.space(pos, True)

    def alternatives(self, pos, name, nested):
        alts = []
        seq, pos = self.sequence(pos, name, nested)
        alts.append(seq)
        while pos < len(self.text) and self.text[pos] == "|":
            pos = self.space(pos + 1, True)
            seq, pos = self.sequence(pos, name, nested)
            alts.append(seq)
        return alts, pos

    def sequence(self, pos, name, nested):
        t = self.text
        seq = []
        last = None        # index in seq where the last item starts (for */+/?/{})
        while pos < len(t):
            c = t[pos]
            if c == '"':
                pos += 1
                last = len(seq)
                while True:
                    if pos >= len(t):
                        raise self.error("unexpected end of input in a string", pos)
                    if t[pos] == '"':
                        break
                    cp, pos = self.char(pos)
                    seq.extend(("bytes", 1 << b) for b in _utf8(cp))
                self.count(len(seq) - last, pos)
                if last == len(seq):   # "" is the empty sequence: nothing to repeat
                    last = None
                pos = self.space(pos + 1, nested)
            elif c == "[":
                start = pos
                pos += 1
                negated = pos < len(t) and t[pos] == "^"
                if negated:
                    pos += 1
                ranges = []
                while True:
                    if pos >= len(t):
                        raise self.error("unexpected end of input in a character class", start)
                    if t[pos] == "]":
                        break
                    lo, pos = self.char(pos)
                    hi = lo
                    if t[pos:pos + 1] == "-" and t[pos + 1:pos + 2] not in ("]", ""):
                        hi, pos = self.char(pos + 1)
                        if hi < lo:
                            raise self.error("character range out of order", start)
                    ranges.append((lo, hi))
                if negated:
                    ranges = _complement(ranges)
                last = len(seq)
                seq.append(("class", tuple(_normalise(ranges))))
                self.count(1, pos)
                pos = self.space(pos + 1, nested)
            elif c == ".":
                last = len(seq)
                seq.append(("class", ((0, 0x10FFFF),)))
                self.count(1, pos)
                pos = self.space(pos + 1, nested)
            elif _is_word(c):
                ref, end = self.name(pos)
                self.refs.setdefault(ref, pos)
                last = len(seq)
                seq.append(("ref", ref))
                self.count(1, pos)
                pos = self.space(end, nested)
            elif c == "(":
                start = pos
                pos = self.space(pos + 1, True)
                alts, pos = self.alternatives(pos, name, True)
                if pos >= len(t):
                    raise self.error("'(' is never closed", start)
                if t[pos] != ")":
                    raise self.error("expecting ')'", pos)
                last = len(seq)
                seq.append(("ref", self.new_rule(name, alts)))
                self.count(1, pos)
                pos = self.space(pos + 1, nested)
            elif c in "*+?":
                if last is None:
                    raise self.error(f"expecting an item before '{c}'", pos)
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                seq = self.repeat(seq, last, lo, hi, name, pos)
                pos = self.space(pos + 1, nested)
            elif c == "{":
                if last is None:
                    raise self.error("expecting an item before '{'", pos)
                brace = pos
                pos = self.space(pos + 1, nested)
                lo, pos = self.integer(pos)
                pos = self.space(pos, nested)
                hi = lo
                if t[pos:pos + 1] == ",":
                    pos = self.space(pos + 1, nested)
                    hi = None
                    if pos < len(t) and t[pos].isascii() and t[pos].isdigit():
                        hi, pos = self.integer(pos)
                        pos = self.space(pos, nested)
                if t[pos:pos + 1] != "}":
                    raise self.error("expecting '}'", pos)
                if lo > MAX_REPETITION:
                    raise GrammarLimitError(f"repetition count above {MAX_REPETITION}",
                                            self.text, brace)
                if hi is not None and hi > MAX_REPETITION:     # as llama.cpp: unbounded
                    hi = None
                if hi is not None and hi < lo:
                    raise self.error("repetition {m,n} with n < m", brace)
                seq = self.repeat(seq, last, lo, hi, name, brace)
                pos = self.space(pos + 1, nested)
            elif c in "<!":
                last = len(seq)
                item, pos = self.token(pos)
                seq.append(item)
                self.count(1, pos)
                pos = self.space(pos, nested)
            else:
                break
        return seq, pos

    def token(self, pos):
        """A token reference: <[id]>, <text> (the one token that text is), and either
        negated with '!' (any single token but that one), as llama.cpp's grammars
        write them. ('token', negated, id or text, position)."""
        t = self.text
        start = pos
        negated = t[pos] == "!"
        if negated:
            pos += 1
        if t[pos:pos + 1] != "<":
            raise self.error("expecting '<' after '!'", pos)
        if t[pos + 1:pos + 2] == "[":
            number, pos = self.integer(pos + 2)
            if t[pos:pos + 1] != "]":
                raise self.error("expecting ']'", pos)
            if t[pos + 1:pos + 2] != ">":
                raise self.error("expecting '>'", pos + 1)
            return ("token", negated, number, start), pos + 2
        end = t.find(">", pos + 1)
        if end < 0:
            raise self.error("expecting '>' to close the token", pos)
        return ("token", negated, t[pos:end + 1], start), end + 1

    def repeat(self, seq, last, lo, hi, name, pos):
        """seq with its items from `last` on repeated lo..hi times (hi None: unbounded)."""
        item = seq[last:]
        head = seq[:last]
        self.count(len(item) * max(lo, 1) + (hi - lo if hi is not None else 1), pos)
        out = head + item * lo
        if hi is None:
            # S' ::= S S' |
            self.fresh += 1
            rest = f"{name}_{self.fresh}"
            self.rules[rest] = [item + [("ref", rest)], []]
            self.order.append(rest)
            out.append(("ref", rest))
        elif hi > lo:
            # S'(1) ::= S | ;  S'(x) ::= S S'(x-1) |
            inner = None
            for _ in range(hi - lo):
                body = item + ([("ref", inner)] if inner else [])
                inner = self.new_rule(name, [body, []])
            out.append(("ref", inner))
        return out


# ---------------------------------------------------------------- compiling

class Grammar:
    """A parsed and compiled GBNF grammar. `kind`, `arg`: the flat element array
    (END / BYTES mask / REF rule index); `starts[rule]`: positions of its alternatives."""

    def __init__(self, text, deadline=None):
        if not isinstance(text, str):
            raise GrammarError("the grammar must be a string")
        if len(text) > MAX_GRAMMAR_CHARS:
            raise GrammarLimitError(f"the grammar is {len(text)} characters; the limit is "
                                    f"{MAX_GRAMMAR_CHARS}")
        self.text = text
        rules, order = _Parser(text, deadline).parse()
        self._compile(rules, order, deadline)
        self._check_left_recursion(order)

    def _compile(self, rules, order, deadline):
        index = {name: i for i, name in enumerate(order)}
        classes = {}            # code point ranges -> rule index of its UTF-8 sequences
        extra = []              # alternatives of the class rules, appended after the named
        kind, arg = [], []
        starts = [None] * len(order)
        tokens = {}             # position of a token element -> (negated, ref index)
        token_refs = []         # (id or text, character position) of each reference

        def class_rule(ranges):
            if ranges not in classes:
                ascii_mask = 0
                alts = []
                for lo, hi in ranges:
                    for seq in utf8_sequences(lo, hi):
                        if len(seq) == 1:
                            ascii_mask |= _byte_mask(*seq[0])
                        else:
                            alts.append([_byte_mask(a, b) for a, b in seq])
                if ascii_mask:
                    alts.insert(0, [ascii_mask])
                classes[ranges] = len(order) + len(extra)
                extra.append(alts)
            return classes[ranges]

        def emit(seq):
            start = len(kind)
            for item in seq:
                if item[0] == "bytes":
                    kind.append(_BYTES)
                    arg.append(item[1])
                elif item[0] == "ref":
                    kind.append(_REF)
                    arg.append(index[item[1]])
                elif item[0] == "token":
                    # A byte set that matches no byte: the automaton rests on it, a token
                    # boundary is the only place it can be passed (Automaton.after_token).
                    tokens[len(kind)] = (item[1], len(token_refs))
                    token_refs.append((item[2], item[3]))
                    kind.append(_BYTES)
                    arg.append(0)
                else:
                    ranges = item[1]
                    if ranges and ranges[-1][1] <= 0x7F:    # ASCII only: one byte set
                        mask = 0
                        for lo, hi in ranges:
                            mask |= _byte_mask(lo, hi)
                        kind.append(_BYTES)
                        arg.append(mask)
                    else:
                        kind.append(_REF)
                        arg.append(class_rule(ranges))
            kind.append(_END)
            arg.append(0)
            return start

        for name in order:
            starts[index[name]] = [emit(seq) for seq in rules[name]]
            if deadline is not None and time.monotonic() > deadline:
                raise GrammarLimitError("compiling the grammar took too long; simplify it")
        for alts in extra:
            pos = []
            for masks in alts:
                pos.append(len(kind))
                for m in masks:
                    kind.append(_BYTES)
                    arg.append(m)
                kind.append(_END)
                arg.append(0)
            starts.append(pos)
        self.names = list(order) + [f"class_{i}" for i in range(len(extra))]
        self.kind = kind
        self.arg = arg
        self.starts = starts
        self.root = index["root"]
        self.tokens = tokens
        self.token_refs = token_refs

    def _check_left_recursion(self, order):
        """A rule that can reach itself without reading a byte would expand forever
        (llama.cpp refuses these too)."""
        kind, arg, starts = self.kind, self.arg, self.starts
        n = len(starts)
        nullable = [False] * n
        changed = True
        while changed:
            changed = False
            for r in range(n):
                if nullable[r]:
                    continue
                for p in starts[r]:
                    while kind[p] == _REF and nullable[arg[p]]:
                        p += 1
                    if kind[p] == _END:
                        nullable[r] = changed = True
                        break
        left = [set() for _ in range(n)]
        for r in range(n):
            for p in starts[r]:
                while kind[p] == _REF:
                    left[r].add(arg[p])
                    if not nullable[arg[p]]:
                        break
                    p += 1
        # iterative DFS for a cycle in the left-corner graph
        color = [0] * n
        for root in range(n):
            if color[root]:
                continue
            stack = [(root, iter(left[root]))]
            color[root] = 1
            while stack:
                r, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    color[r] = 2
                    stack.pop()
                elif color[nxt] == 1:
                    name = self.names[nxt].split("_")[0]
                    raise GrammarError(f"left recursion in rule '{name}'")
                elif color[nxt] == 0:
                    color[nxt] = 1
                    stack.append((nxt, iter(left[nxt])))


# ---------------------------------------------------------------- matching

class State:
    """A set of live parse stacks; caches its byte transitions and allowed tokens."""

    __slots__ = ("stacks", "next", "accepting", "final", "allowed", "waiting", "__weakref__")

    def __init__(self, stacks, token_at):
        self.stacks = stacks
        self.next = {}
        self.accepting = () in stacks
        self.final = stacks == frozenset([()])   # complete, and nothing may follow
        self.allowed = None
        # Stacks resting on a token reference: (stack, negated, reference index).
        self.waiting = tuple((st,) + token_at[st[-1]] for st in stacks
                             if st and st[-1] in token_at) if token_at else ()

    @property
    def dead(self):
        return not self.stacks


class Automaton:
    """The states of one grammar, built lazily and interned, shared by every request
    that uses the same grammar (thread-safe: states are immutable, caches idempotent)."""

    def __init__(self, grammar):
        self.grammar = grammar
        self.lock = threading.Lock()
        self.table = {}
        self.dead = self._intern(frozenset())
        out = set()
        for a in grammar.starts[grammar.root]:
            self._expand((a,), out)
        self.start = self._intern(frozenset(out))

    def _intern(self, stacks):
        state = self.table.get(stacks)
        if state is None:
            if len(self.table) >= MAX_STATES:
                self._reset()
            if len(stacks) > MAX_STACKS:
                raise GrammarLimitError(f"the grammar is too ambiguous (more than {MAX_STACKS} "
                                        "parses alive at once); simplify it")
            state = self.table.setdefault(stacks, State(stacks, self.grammar.tokens))
        return state

    def _reset(self):
        """Drop the cached graph (bounded memory); live states rebuild what they need."""
        with self.lock:
            for s in self.table.values():
                s.next = {}
                s.allowed = None
            self.table = {}
            self.table[frozenset()] = self.dead

    def _expand(self, stack, out):
        """Add to `out` the stacks `stack` becomes once its top is a byte set (or empty)."""
        kind, arg, starts = self.grammar.kind, self.grammar.arg, self.grammar.starts
        work = [stack]
        while work:
            st = work.pop()
            while True:
                if not st:
                    out.add(())
                    break
                p = st[-1]
                k = kind[p]
                if k == _BYTES:
                    out.add(st)
                    break
                if k == _END:
                    st = st[:-1]
                    continue
                nxt = p + 1
                base = st[:-1] if kind[nxt] == _END else st[:-1] + (nxt,)
                alts = starts[arg[p]]
                for a in alts[1:]:
                    work.append(base + (a,))
                st = base + (alts[0],)

    def step(self, state, byte):
        nxt = state.next.get(byte)
        if nxt is not None:
            return nxt
        arg = self.grammar.arg
        out = set()
        for st in state.stacks:
            if st and arg[st[-1]] >> byte & 1:
                self._expand(st[:-1] + (st[-1] + 1,), out)
        nxt = self._intern(frozenset(out))
        state.next[byte] = nxt
        return nxt

    def after_token(self, state, passed):
        """The state after one token: `state` fed the token's bytes (None: the token
        has no text), joined with the stacks in `passed` moved past the token
        reference on their top (the references that token matches)."""
        out = set()
        for st in passed:
            self._expand(st[:-1] + (st[-1] + 1,), out)
        if state is not None:
            out |= state.stacks
        return self._intern(frozenset(out))

    def feed(self, state, data):
        for b in data:
            state = self.step(state, b)
            if not state.stacks:
                break
        return state

    def matches(self, data):
        """Whether the whole of `data` (bytes) is a sentence of the grammar."""
        return self.feed(self.start, data).accepting


# ---------------------------------------------------------------- tokens

class Vocabulary:
    """The tokenizer's pieces sorted by bytes, with each one's common prefix with the
    one before: walking them in order shares the automaton steps of shared prefixes
    and skips every token under a dead prefix at once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.n_vocab = tokenizer.n_vocab
        self.eog = frozenset(tokenizer.eog_ids)
        pieces = []
        self.piece = {}
        self.control = set()    # control tokens with text: matched by token references only
        for t in range(tokenizer.n_vocab):
            if t in self.eog:
                continue
            p = tokenizer.token_to_piece(t)
            if not p:
                continue
            if tokenizer.is_control(t):
                self.control.add(t)
                continue
            pieces.append((p, t))
            self.piece[t] = p
        self._any = None
        pieces.sort()
        self.keys = [p for p, _ in pieces]
        self.ids = [t for _, t in pieces]
        lcp = [0] * len(pieces)
        for i in range(1, len(pieces)):
            a, b = self.keys[i - 1], self.keys[i]
            n = min(len(a), len(b))
            j = 0
            while j < n and a[j] == b[j]:
                j += 1
            lcp[i] = j
        self.lcp = lcp


    def any_token(self):
        """Every token a token reference can match (llama.cpp: any token with text that
        does not end generation), as a frozenset."""
        if self._any is None:
            self._any = frozenset(self.piece) | frozenset(self.control)
        return self._any

    def matchable(self, token):
        return token in self.piece or token in self.control

    def resolve(self, grammar):
        """The token id of each of `grammar`'s token references; GrammarError (with
        where) for a text that is not exactly one token or an id beyond the vocabulary."""
        ids = []
        for ref, pos in grammar.token_refs:
            if isinstance(ref, int):
                if ref >= self.n_vocab:
                    raise GrammarError(f"token id {ref} is beyond the vocabulary "
                                       f"({self.n_vocab} tokens)", grammar.text, pos)
                ids.append(ref)
                continue
            found = self.tokenizer.encode(ref, add_special=False, parse_special=True)
            if len(found) != 1:
                raise GrammarError(f"'{ref}' is not a single token of this model (it is "
                                   f"{len(found)}); write <[id]> with the token's id",
                                   grammar.text, pos)
            ids.append(found[0])
        return ids


_vocabularies = weakref.WeakKeyDictionary()
_vocab_lock = threading.Lock()


def vocabulary(tokenizer):
    with _vocab_lock:
        v = _vocabularies.get(tokenizer)
        if v is None:
            v = _vocabularies[tokenizer] = Vocabulary(tokenizer)
        return v


def allowed_tokens(automaton, vocab, state):
    """Every token (a frozenset of ids) whose bytes keep `state` alive; end-of-generation
    tokens when the state accepts. Cached on the state."""
    cached = state.allowed
    if cached is not None:
        return cached
    keys, ids, lcp = vocab.keys, vocab.ids, vocab.lcp
    step = automaton.step
    out = []
    path = [state]
    i, n = 0, len(keys)
    while i < n:
        piece = keys[i]
        c = lcp[i]
        del path[c + 1:]
        s = path[c]
        d, length = c, len(piece)
        while d < length:
            s = s.next.get(piece[d]) or step(s, piece[d])
            if not s.stacks:
                break
            path.append(s)
            d += 1
        i += 1
        if d == length:
            out.append(ids[i - 1])
        else:
            while i < n and lcp[i] > d:
                i += 1
    if state.accepting:
        out.extend(vocab.eog)
    state.allowed = frozenset(out)
    return state.allowed
