"""GBNF grammars: parsing (llama.cpp's examples, errors with positions), the byte
automaton against an independent recogniser, and decoding held to a grammar."""

import glob
import os
import random

import pytest

from runtime.constraint import Constraint, automaton, from_grammar
from runtime.grammar import (Automaton, Grammar, GrammarError, GrammarLimitError, _Parser,
                             utf8_sequences)
from runtime.sampling import Sampler, SamplingParams
from tests import llama_cpp_sdist

def peer_grammars():
    """llama.cpp's grammars/*.gbnf (tests/llama_cpp_sdist.py: skipped only outside CI)."""
    files = sorted(glob.glob(os.path.join(llama_cpp_sdist.require("grammars"), "*.gbnf")))
    assert len(files) >= 8, files
    return files


# ---------------------------------------------------------------- an independent recogniser

class Recogniser:
    """Matches text against the parsed rules (not the compiled automaton): a memoised
    search over code points that returns every position a rule can end at, and notes
    when the text ran out inside a match (so prefixes can be judged too)."""

    def __init__(self, text):
        self.rules, _ = _Parser(text, None).parse()

    def check(self, data):
        """'full' when data is a sentence, 'prefix' when it can be continued into one,
        None otherwise."""
        self.data = data
        self.memo = {}
        self.ran_out = False
        ends = self.rule("root", 0)
        if len(data) in ends:
            return "full"
        return "prefix" if self.ran_out else None

    def rule(self, name, pos):
        key = (name, pos)
        if key not in self.memo:
            self.memo[key] = set()        # no left recursion: a re-entry matches nothing
            out = set()
            for alt in self.rules[name]:
                out |= self.seq(alt, 0, pos)
            self.memo[key] = out
        return self.memo[key]

    def seq(self, items, i, pos):
        if i == len(items):
            return {pos}
        out = set()
        for end in self.item(items[i], pos):
            out |= self.seq(items, i + 1, end)
        return out

    def item(self, item, pos):
        data = self.data
        if item[0] == "ref":
            return self.rule(item[1], pos)
        if pos >= len(data):
            self.ran_out = True
            return set()
        if item[0] == "bytes":
            return {pos + 1} if item[1] >> data[pos] & 1 else set()
        # a character class: one UTF-8 encoded code point
        for n in (1, 2, 3, 4):
            chunk = data[pos:pos + n]
            try:
                ch = chunk.decode("utf-8")
            except UnicodeDecodeError:
                if len(chunk) < n:        # the text ends inside the character
                    self.ran_out = True
                    return set()
                continue
            cp = ord(ch)
            return {pos + n} if any(lo <= cp <= hi for lo, hi in item[1]) else set()
        return set()


# ---------------------------------------------------------------- parsing

def test_peer_grammars_parse_and_accept_examples():
    texts = {os.path.basename(f): open(f, encoding="utf-8").read() for f in peer_grammars()}
    for name, text in texts.items():
        Automaton(Grammar(text))
    examples = {
        "json.gbnf": [b'{"a": [1, -2.5e3, "x\\u00e9"], "b": {"c": null, "d": true}}'],
        "arithmetic.gbnf": [b"(1+2)*3-x/5= 4\n"],
        "list.gbnf": [b"- milk\n- eggs\n"],
        "chess.gbnf": [b"1. e4 e5\n2. Nf3 Nc6\n"],
        "japanese.gbnf": ["こんにちは".encode()],
    }
    for name, sentences in examples.items():
        if name in texts:
            a = Automaton(Grammar(texts[name]))
            r = Recogniser(texts[name])
            for s in sentences:
                assert a.matches(s), (name, s)
                assert r.check(s) == "full", (name, s)


@pytest.mark.parametrize("text,message,line,col", [
    ('root ::= this is (not valid GBNF', "'(' is never closed", 1, 18),
    ('root ::= "abc', "unexpected end of input", 1, 14),
    ('root ::= [a-z', "character class", 1, 10),
    ('root ::= "a"\nx ::= "b" )', "expecting a newline", 2, 11),
    ('root ::= "a" ( "b" | "c" ', "'(' is never closed", 1, 14),
    ('root ::= ( "b" ]', "expecting ')'", 1, 16),
    ('root ::= * "a"', "expecting an item before '*'", 1, 10),
    ('root ::= "\\q"', "unknown escape", 1, 11),
    ('root ::= "\\x4"', "hex digits", 1, 13),
    ('root ::= "a"{2,1}', "n < m", 1, 13),
    ('root ::= "a"{x}', "expecting an integer", 1, 14),
    ('root ::= missing', "undefined rule 'missing'", 1, 10),
    ('root ::= [z-a]', "out of order", 1, 10),
    ('root = "a"', "expecting '::='", 1, 6),
])
def test_malformed_grammars_say_where(text, message, line, col):
    with pytest.raises(GrammarError) as e:
        Grammar(text)
    assert message in str(e.value)
    assert f"line {line}, column {col}" in str(e.value)


def test_grammar_errors_without_position():
    with pytest.raises(GrammarError, match="no 'root'"):
        Grammar('item ::= "a"')
    with pytest.raises(GrammarError, match="left recursion in rule 'expr'"):
        Grammar('root ::= expr\nexpr ::= expr "+" "1" | "1"')
    with pytest.raises(GrammarError, match="left recursion"):
        Grammar('root ::= ("a"?)* "b"')
    with pytest.raises(GrammarError, match="defined twice"):
        Grammar('root ::= "a"\nroot ::= "b"')


def test_grammar_limits():
    with pytest.raises(GrammarLimitError):
        Grammar('root ::= "a"{2001}')
    with pytest.raises(GrammarLimitError):
        Grammar("root ::= " + " | ".join(f'"{i:06d}"' for i in range(60000)))
    with pytest.raises(GrammarLimitError, match="too long"):
        Grammar('root ::= "a"' + ' "b"' * 1000, deadline=0.0)


# ---------------------------------------------------------------- the automaton

def test_utf8_sequences_cover_ranges_exactly():
    rng = random.Random(1)
    for lo, hi in [(0, 0x10FFFF), (0x80, 0x7FF), (0x7F, 0x800), (0xD000, 0xE100),
                   (0x3041, 0x309F), (0x10000, 0x10FFFF), (0x61, 0x61)]:
        seqs = utf8_sequences(lo, hi)
        def covered(data):
            return any(len(s) == len(data) and all(a <= b <= c for (a, c), b in zip(s, data))
                       for s in seqs)
        probes = {lo, hi, lo - 1, hi + 1} | {rng.randrange(0, 0x110000) for _ in range(3000)}
        for cp in probes:
            if 0 <= cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF:
                assert covered(chr(cp).encode()) == (lo <= cp <= hi), hex(cp)


GRAMMARS = {
    "repeats": 'root ::= "a"{2,4} ("b" | "cd")* [x-z]? "!"',
    "classes": 'root ::= [^"\\n]+ "\\n" [ぁ-ゟ]{1,3} . "$"',
    "nested": 'root ::= item ("," item)*\nitem ::= [0-9]+ | "(" root ")"',
    "empty": 'root ::= "x" | ""',
}


@pytest.mark.parametrize("name", sorted(GRAMMARS))
def test_automaton_agrees_with_recogniser(name):
    text = GRAMMARS[name]
    a = Automaton(Grammar(text))
    r = Recogniser(text)
    rng = random.Random(name)
    alphabet = list("abcdxyz!,()0129$\"\n ") + ["ぁ", "ゟ", "é", "日"]
    for _ in range(1500):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 9))).encode()
        state = a.feed(a.start, s)
        verdict = r.check(s)
        assert state.accepting == (verdict == "full"), s
        assert bool(state.stacks) == (verdict is not None), s


# ---------------------------------------------------------------- decoding

class ByteTokenizer:
    """Every byte a token, plus a few multi-byte ones; token 0 ends generation."""

    def __init__(self):
        extra = [b"- ", b"\n", b'{"', b'":', b"e4 ", b"1. ", "の".encode(), b"  ", b"ab"]
        self.pieces = [b""] + [bytes([b]) for b in range(256)] + extra
        self.eog_ids = {0}
        self.n_vocab = len(self.pieces)

    def is_control(self, token):
        return token == 0

    def token_to_piece(self, token, special=True):
        return self.pieces[token]


def sample_text(constraint, tokenizer, seed, n=200, spread=3.0, bias=None):
    """Random logits through the constraint: every token ranked at random each step
    (normal with sd `spread`, plus `bias` {token: added logit})."""
    rng = random.Random(seed)
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=40, top_p=0.95, min_p=0.0,
                                     seed=seed))
    out = b""
    for _ in range(n):
        logits = [rng.gauss(0, spread) for _ in range(tokenizer.n_vocab)]
        for t, v in (bias or {}).items():
            logits[t] += v
        t = constraint.sample(sampler, logits, [])
        if t in tokenizer.eog_ids:
            return out, True
        out += tokenizer.token_to_piece(t)
        if constraint.advance(t):
            return out, True
    return out, False


def test_random_decoding_follows_peer_grammars():
    tok = ByteTokenizer()
    for path in peer_grammars():
        text = open(path, encoding="utf-8").read()
        r = Recogniser(text)
        for seed in range(3):
            out, done = sample_text(from_grammar(tok, text), tok, seed, n=60)
            verdict = r.check(out)
            assert verdict == "full" if done else verdict in ("full", "prefix"), (path, out)


def test_random_decoding_follows_local_grammars():
    tok = ByteTokenizer()
    for name, text in GRAMMARS.items():
        r = Recogniser(text)
        finished = 0
        for seed in range(10):
            out, done = sample_text(from_grammar(tok, text), tok, seed)
            finished += done
            assert r.check(out) == "full" if done else r.check(out) == "prefix", (name, out)
        assert finished or name == "classes", name     # the others end in 200 tokens


def test_constraint_ends_when_complete_and_allows_eog_only_then():
    tok = ByteTokenizer()
    c = from_grammar(tok, 'root ::= "ab" "c"?')
    assert not c.fits(0)
    assert c.allowed() == {ord("a") + 1, 257 + 8}        # "a" or the "ab" token
    c.advance(257 + 8)
    assert c.fits(0) and c.complete and c.fits(ord("c") + 1)
    assert c.advance(ord("c") + 1)                        # nothing may follow
    assert isinstance(c, Constraint)


def test_compiled_grammars_are_cached():
    text = 'root ::= "cached" [0-9]'
    assert automaton(text) is automaton(text)


def test_model_decoding_follows_grammars():
    """SmolLM2 sampling under llama.cpp-style grammars: outputs the recogniser accepts."""
    from runtime.loader import load_session, open_gguf
    from tests.models import smollm2
    session = load_session(open_gguf(smollm2()), threads=1, n_ctx=256)
    tok = session.tokenizer
    cases = [
        ('root ::= item{2,3}\nitem ::= "- " [a-z ]{1,12} "\\n"', "Groceries:\n"),
        ('root ::= "(" expr ")"\nexpr ::= term (("+" | "*") term)*\nterm ::= [0-9]{1,3}',
         "A sum: "),
        ('root ::= [A-Z] [a-z]+ " is " ("big" | "small") "."', "Describe a dog:"),
    ]
    for text, prompt in cases:
        r = Recogniser(text)
        ids = tok.encode(prompt, add_special=True, parse_special=False)
        for seed in (1, 2):
            c = from_grammar(tok, text)
            params = SamplingParams(temperature=0.9, seed=seed)
            out = "".join(session.generate(ids, params, 48, constraint=c)).encode()
            verdict = r.check(out)
            if session.finish_reason == "stop":
                assert verdict == "full", (text, out)
            else:
                assert verdict in ("full", "prefix"), (text, out)


def test_missing_llama_cpp_grammars_fail_under_ci(monkeypatch, tmp_path):
    """Under CI a missing llama.cpp tree is a failure, not a skip that reads as a pass."""
    monkeypatch.setattr(llama_cpp_sdist, "_candidates", lambda: [str(tmp_path)])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="tests.llama_cpp_sdist"):
        llama_cpp_sdist.require("grammars")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        llama_cpp_sdist.require("grammars")


# ---------------------------------------------------------------- token references

class SpecialTokenizer(ByteTokenizer):
    """ByteTokenizer plus <think> / </think> as single tokens (</think> a control token)
    and a way to encode text (longest piece first) for <text> references."""

    def __init__(self):
        super().__init__()
        self.pieces += [b"<think>", b"</think>", b"a<"]
        self.think, self.end_think, self.a_lt = range(len(self.pieces) - 3, len(self.pieces))
        self.n_vocab = len(self.pieces)

    def is_control(self, token):
        return token in (0, self.end_think)

    def encode(self, text, add_special=False, parse_special=True):
        data, out = text.encode(), []
        while data:
            best = max((t for t in range(1, self.n_vocab) if data.startswith(self.pieces[t])
                        and (parse_special or not self.is_control(t))),
                       key=lambda t: len(self.pieces[t]))
            out.append(best)
            data = data[len(self.pieces[best]):]
        return out


def byte_token(b):
    return b + 1


def test_token_references_parse_with_positions():
    Grammar('root ::= <[5]> !<[7]>* <[7]> "x" | <think> !</think>{2,3}')
    for text, message, col in [('root ::= <[x]>', "expecting an integer", 12),
                               ('root ::= <[5', "expecting ']'", 13),
                               ('root ::= <[5x]>', "expecting ']'", 13),
                               ('root ::= <[5]]', "expecting '>'", 14),
                               ('root ::= !"a"', "expecting '<' after '!'", 11),
                               ('root ::= "a" <think', "expecting '>' to close", 14)]:
        with pytest.raises(GrammarError) as e:
            Grammar(text)
        assert message in str(e.value) and f"line 1, column {col}" in str(e.value), str(e.value)


def test_token_reference_texts_resolve_against_the_vocabulary():
    tok = SpecialTokenizer()
    c = from_grammar(tok, 'root ::= <think> !</think>* </think>')
    assert c.token_ids == [tok.think, tok.end_think, tok.end_think]
    with pytest.raises(GrammarError, match=r"'<thought>' is not a single token .*"
                                           r"line 2, column 10"):
        from_grammar(tok, 'root ::= x\nx ::= "" <thought>')
    with pytest.raises(GrammarError, match="token id 99999 is beyond the vocabulary"):
        from_grammar(tok, 'root ::= <[99999]>')


def test_token_reference_matches_whole_tokens_only():
    """llama.cpp's semantics: a reference is passed by one whole token; a token whose
    bytes reach it mid-token dies there, one that ends exactly before it lives."""
    tok = SpecialTokenizer()
    c = from_grammar(tok, 'root ::= "a" <think> [0-9]')
    allowed = c.allowed()
    assert byte_token(ord("a")) in allowed
    assert tok.a_lt not in allowed                   # "a<": bytes run into the reference
    assert tok.think not in allowed
    c.advance(byte_token(ord("a")))
    assert c.allowed() == {tok.think}                # "<" as a byte is not the token
    assert not c.fits(byte_token(ord("<")))
    assert not c.advance(tok.think)
    assert c.allowed() == {byte_token(d) for d in b"0123456789"}
    assert c.advance(byte_token(ord("7")))


def test_negated_references_take_any_other_token_including_control():
    tok = SpecialTokenizer()
    c = from_grammar(tok, 'root ::= <think> body </think> "!"\nbody ::= !</think>*')
    c.advance(tok.think)
    every = {t for t in range(1, tok.n_vocab)}
    assert c.allowed() == every                      # all but the end-of-generation token
    c.advance(tok.think)                             # <think> again: only </think> is excluded
    c.advance(byte_token(ord("q")))
    assert c.fits(tok.end_think) and not c.fits(0)
    c.advance(tok.end_think)
    assert c.allowed() == {byte_token(ord("!"))}
    assert c.advance(byte_token(ord("!")))
    # A control token never matches text, only references.
    c = from_grammar(tok, 'root ::= "</think>" | <[%d]> "x"' % tok.think)
    assert not c.fits(tok.end_think) and c.fits(tok.think)
    c = from_grammar(tok, 'root ::= !<[%d]> "x"' % tok.think)
    assert c.fits(tok.end_think) and not c.fits(tok.think) and not c.fits(0)


def test_random_decoding_follows_token_references():
    """Sampled token sequences checked token by token against what the grammar says:
    <think>, then any tokens but </think>, then </think>, then one to three digits."""
    tok = SpecialTokenizer()
    text = 'root ::= <think> body </think> [0-9]{1,3}\nbody ::= !</think>*'
    digits = {byte_token(d) for d in b"0123456789"}
    ended = 0
    for seed in range(12):
        c = from_grammar(tok, text)
        rng = random.Random(seed)
        sampler = Sampler(SamplingParams(temperature=1.0, top_k=40, top_p=0.95, min_p=0.0,
                                         seed=seed))
        tokens = []
        for _ in range(80):
            logits = [rng.gauss(0, 3) for _ in range(tok.n_vocab)]
            logits[tok.end_think] += 6.0 * (len(tokens) > 5)
            t = c.sample(sampler, logits, [])
            if t == 0:
                break
            tokens.append(t)
            if c.advance(t):
                break
        assert tokens[0] == tok.think
        if tok.end_think in tokens:
            close = tokens.index(tok.end_think)
            assert tok.end_think not in tokens[1:close] and close > 0
            tail = b"".join(tok.pieces[t] for t in tokens[close + 1:])
            assert 1 <= len(tail) <= 3 and all(48 <= b <= 57 for b in tail), tokens
            assert all(t in digits for t in tokens[close + 1:])
            ended += 1
    assert ended >= 6


def test_token_references_on_a_real_vocabulary():
    """SmolLM2: <|im_start|> is one control token; a reference to it is passed only by
    that token, and a negated one by anything else but end-of-generation."""
    from runtime.loader import open_gguf
    from runtime.tokenizer import Tokenizer
    from tests.models import smollm2
    tok = Tokenizer.from_gguf(open_gguf(smollm2()))
    (start,) = tok.encode("<|im_start|>", add_special=False, parse_special=True)
    assert tok.is_control(start)
    c = from_grammar(tok, 'root ::= <|im_start|> !<|im_start|> "."')
    assert c.token_ids == [start, start]
    assert c.allowed() == {start}
    c.advance(start)
    hello = tok.encode("Hello", add_special=False, parse_special=False)[0]
    assert c.fits(hello) and not c.fits(start) and not any(c.fits(t) for t in tok.eog_ids)
    c.advance(hello)
    assert c.advance(tok.encode(".", add_special=False, parse_special=False)[0])
    with pytest.raises(GrammarError, match="'<hello world>' is not a single token"):
        from_grammar(tok, 'root ::= <hello world>')
