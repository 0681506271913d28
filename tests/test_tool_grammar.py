"""Tool-call grammars (runtime/tool_grammar.py): each family's grammar accepts the call
texts of llama.cpp's test-chat.cpp, random decoding under it always yields a call the
family's parser reads and whose arguments validate, and lazy decoding (tool_choice
auto) stays free until a trigger, then holds the rest to the grammar."""

import json

import pytest

from runtime import tool_calls as tc
from runtime.constraint import from_grammar
from runtime.grammar import Automaton, Grammar
from runtime.json_schema import validate
from runtime.tool_grammar import LazyConstraint, builtin_tools, call_grammar
from tests.test_grammar import ByteTokenizer, sample_text
from tests.test_tool_calls import CASES, SPECIAL_TOOL, STRING_TOOL

BUILTIN = ["brave_search"]
GRAMMAR_FORMATS = [f for f in tc.FORMATS if f not in ("content", "generic")]
BRAVE = {"type": "function", "function": {"name": "brave_search", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}


class TextTokenizer(ByteTokenizer):
    """Bytes as tokens (no control tokens), and text encoded byte by byte."""

    def encode(self, text, add_special=False, parse_special=True):
        return [b + 1 for b in text.encode()]


def tools_for(fmt):
    return [SPECIAL_TOOL, STRING_TOOL] + ([BRAVE] if fmt == "llama3" else [])


@pytest.mark.parametrize("fmt", GRAMMAR_FORMATS)
def test_grammar_accepts_the_reference_call_texts(fmt):
    """The call part of every test-chat.cpp text with calls (content before it cut off)."""
    text, triggers = call_grammar(fmt, tools_for(fmt), True, TextTokenizer(), BUILTIN)
    automaton = Automaton(Grammar(text))
    seen = 0
    for case_fmt, options, reply, _content, _reasoning, calls in CASES:
        if case_fmt != fmt or not calls or any(c[0] not in ("special_function", "echo")
                                               for c in calls):
            continue
        start = min(i for i in (reply.find(w.decode()) for k, w in triggers if k == "word")
                    if i >= 0) if any(k == "word" and w.decode() in reply
                                      for k, w in triggers) else 0
        part = reply[start:]
        if fmt == "command_r7b" or "tool calls begin" in reply:
            continue        # reasoning first / a spelling the parser reads but we never write
        assert automaton.matches(part.encode()), (fmt, part)
        seen += 1
    assert seen or fmt == "command_r7b"


def decode(constraint, tok, seed, n=400, bias=None):
    return sample_text(constraint, tok, seed, n=n, spread=2.0, bias=bias)


@pytest.mark.parametrize("fmt", GRAMMAR_FORMATS)
def test_required_calls_always_parse_and_validate(fmt):
    """Random logits under the grammar: every finished reply is a call of one of the
    tools that the family's parser reads back, with arguments that validate."""
    tok = TextTokenizer()
    tools = tools_for(fmt)
    schemas = {tc.tool_function(t)["name"]: tc.tool_function(t)["parameters"] for t in tools}
    text, _ = call_grammar(fmt, tools, False, tok, BUILTIN)
    # Favour closing characters so replies finish within the budget.
    bias = {b + 1: 2.5 for b in b'"}]>\n</'}
    finished = 0
    for seed in range(6):
        out, done = decode(from_grammar(tok, text), tok, seed, n=1500, bias=bias)
        if not done:
            continue
        finished += 1
        msg = tc.parse_reply(out.decode("utf-8", "replace"), fmt, tools=tools)
        assert len(msg.tool_calls) == 1 and not msg.content.strip(), (out, msg)
        call = msg.tool_calls[0]
        assert validate(json.loads(call.arguments), schemas[call.name]) == [], (out, call)
    assert finished >= 3, fmt


def feed(lazy, tok, text):
    """Advance a lazy constraint over text (one byte token at a time); True when done."""
    for b in text.encode():
        if lazy.advance(b + 1):
            return True
    return False


def test_lazy_grammar_is_free_until_the_trigger():
    tok = TextTokenizer()
    text, triggers = call_grammar("hermes", [SPECIAL_TOOL], False, tok)
    lazy = LazyConstraint(tok, text, triggers)
    feed(lazy, tok, "Sure, let me check. <tool")
    assert lazy.inner is None                       # free: anything may come
    feed(lazy, tok, "_call>\n")
    assert lazy.inner is not None
    allowed = lazy.inner.allowed()
    assert ord("{") + 1 in allowed and ord("a") + 1 not in allowed     # the call object
    assert feed(lazy, tok, '{"name": "special_function", "arguments": {"arg1": 1}}\n'
                           '</tool_call>')


def test_lazy_grammar_replays_a_trigger_inside_a_token():
    """The trigger begins inside a token: only its tail goes into the grammar."""
    tok = TextTokenizer()
    tok.pieces.append(b"ok <tool_call>\n{")
    tok.n_vocab = len(tok.pieces)
    text, triggers = call_grammar("hermes", [SPECIAL_TOOL], False, tok)
    lazy = LazyConstraint(tok, text, triggers)
    assert not lazy.advance(tok.n_vocab - 1)
    assert lazy.inner is not None
    allowed = lazy.inner.allowed()
    assert ord('"') + 1 in allowed and ord("a") + 1 not in allowed and ord("{") + 1 not in allowed


def test_lazy_grammar_waits_for_the_end_of_reasoning():
    tok = TextTokenizer()
    text, triggers = call_grammar("hermes", [SPECIAL_TOOL], False, tok)
    lazy = LazyConstraint(tok, text, triggers, thinking="maybe")
    feed(lazy, tok, "<think>I could write <tool_call> here")
    assert lazy.inner is None
    feed(lazy, tok, "</think>Calling.<tool_call>")
    assert lazy.inner is not None
    forced = LazyConstraint(tok, text, triggers, thinking="forced")
    feed(forced, tok, "maybe <tool_call>")
    assert forced.inner is None


def test_lazy_grammar_start_pattern_and_giving_up():
    """Llama 3.x: a reply that opens with {"name" is a call; one that turns out not to
    fit leaves decoding free rather than forcing nonsense."""
    tok = TextTokenizer()
    text, triggers = call_grammar("llama3", [SPECIAL_TOOL], False, tok)
    lazy = LazyConstraint(tok, text, triggers)
    feed(lazy, tok, ' {"name"')
    assert lazy.inner is not None
    assert feed(lazy, tok, ': "special_function", "parameters": {"arg1": 7}}')
    other = LazyConstraint(tok, text, triggers)
    feed(other, tok, "The JSON {\"name\": \"x\"} is an example.")
    assert other.inner is None
    tok = TextTokenizer()
    tok.pieces.append(b'{"name": 5')     # one token: the replay cannot follow it
    tok.n_vocab = len(tok.pieces)
    late = LazyConstraint(tok, text, triggers)
    assert not late.advance(tok.n_vocab - 1)
    assert late.inner is None and late.given_up
    feed(late, tok, '{"name": "special_function"')
    assert late.inner is None


def test_lazy_decoding_finishes_calls_it_starts():
    """Random decoding after a trigger: the call completes and validates."""
    tok = TextTokenizer()
    text, triggers = call_grammar("mistral_nemo", [SPECIAL_TOOL], False, tok)
    bias = {b + 1: 2.5 for b in b'"}]'}
    for seed in range(4):
        lazy = LazyConstraint(tok, text, triggers)
        feed(lazy, tok, "Let me call it. [TOOL_CALLS]")
        out, done = decode(lazy, tok, seed, bias=bias)
        assert done
        msg = tc.parse_reply("Let me call it. [TOOL_CALLS]" + out.decode(), "mistral_nemo")
        assert msg.content == "Let me call it." and len(msg.tool_calls) == 1
        args = json.loads(msg.tool_calls[0].arguments)
        assert validate(args, SPECIAL_TOOL["function"]["parameters"]) == []


def test_llama31_builtin_tools():
    """Llama 3.1's built-ins: listed by the template from `builtin_tools`, called with
    <|python_tag|>, read back as calls, and held to that shape by the grammar."""
    from runtime.chat import ChatTemplate
    from tests.test_tool_calls import template
    source = template("meta-llama-Llama-3.1-8B-Instruct.jinja")
    names = builtin_tools("llama3", source, [SPECIAL_TOOL, BRAVE])
    assert names == ["brave_search"]
    assert builtin_tools("llama3", template("meta-llama-Llama-3.2-3B-Instruct.jinja"),
                         [BRAVE]) == []
    tmpl = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    call = {"id": "c1", "type": "function",
            "function": {"name": "brave_search", "arguments": {"query": "llamas"}}}
    text = tmpl.render([{"role": "user", "content": "Search llamas"},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "tool_call_id": "c1", "content": "many"}], True,
                       {"tools": [SPECIAL_TOOL, BRAVE], "builtin_tools": names,
                        "date_string": "01 Dec 2026"})
    assert "Tools: brave_search" in text
    assert '<|python_tag|>brave_search.call(query="llamas")' in text
    msg = tc.parse_reply('<|python_tag|>brave_search.call(query="llamas in Peru")', "llama3")
    assert [(c.name, json.loads(c.arguments)) for c in msg.tool_calls] == [
        ("brave_search", {"query": "llamas in Peru"})]
    tok = TextTokenizer()
    gbnf, triggers = call_grammar("llama3", [SPECIAL_TOOL, BRAVE], False, tok, names)
    assert ("word", b"<|python_tag|>") in triggers
    automaton = Automaton(Grammar(gbnf))
    assert automaton.matches(b'<|python_tag|>brave_search.call(query="llamas")')
    assert not automaton.matches(b'<|python_tag|>brave_search.call(q="llamas")')
    assert automaton.matches(b'{"name": "special_function", "parameters": {"arg1": 1}}')
