"""Grammars that hold a tool call to its family's format and its function's schema.

    call_grammar(fmt, tools, parallel, tokenizer) -> (GBNF text, triggers) or None

The grammar's root matches the tool-call part of a reply in that format, from its
opening marker to its end: `tool_choice: required` (or a named function) decodes under
it from the first token. With `tool_choice: auto` the model writes freely until a
trigger appears, as llama.cpp's lazy grammars do (grammar_lazy + grammar_triggers):
("word", bytes) anywhere after any reasoning block, or ("start", regex) at the start of
the reply. Then the text from the trigger on is replayed into the grammar and the rest
of the reply is held to it, so a call the model begins always parses and its arguments
validate (LazyConstraint).

Markers that are one control token of the vocabulary are written as token references
(<[id]>): the byte-level automaton never spells out control tokens.

Standard library only: this runs on a bare python3.
"""

import re

from runtime import tool_calls as tc
from runtime.constraint import Constraint, automaton
from runtime.json_schema import literal, schema_rules


NEWLINE = literal("\n")


def _marker(tokenizer, text):
    ids = tokenizer.encode(text, add_special=False, parse_special=True)
    if len(ids) == 1 and tokenizer.is_control(ids[0]):
        return f"<[{ids[0]}]>"
    return literal(text)


def _params(tool):
    params = tc.tool_function(tool).get("parameters")
    return params if isinstance(params, dict) and params else {"type": "object"}


def _name(tool):
    return tc.tool_function(tool).get("name", "")


def _call_schema(tool, args_key="arguments", id_key=None):
    """{"name": const, args_key: parameters}, with Mistral's nine-character id last."""
    props = {"name": {"const": _name(tool)}, args_key: _params(tool)}
    if id_key:
        props[id_key] = {"type": "string", "minLength": 9, "maxLength": 9}
    return {"type": "object", "properties": props, "required": list(props)}


def _action_schema(tool):
    """Command R7B's action: {"tool_call_id", "tool_name", "parameters"}, in that order."""
    props = {"tool_call_id": {"type": "string"}, "tool_name": {"const": _name(tool)},
             "parameters": _params(tool)}
    return {"type": "object", "properties": props, "required": list(props)}


def _any_of(schemas):
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _array(item, parallel):
    array = {"type": "array", "items": item, "minItems": 1}
    if not parallel:
        array["maxItems"] = 1
    return array


def _repeat(item, parallel, sep="space"):
    return f"{item} ({sep} {item})*" if parallel else item


def _alternatives(names):
    return " | ".join(names)


def call_grammar(fmt, tools, parallel, tokenizer, builtin_tools=()):
    """(GBNF, triggers) for the tool-call part of a reply in format `fmt`, or None for
    formats without one (generic replies are constrained whole, by schema).
    `builtin_tools`: names Llama 3.1 calls as <|python_tag|>name.call(..) (builtin_tools())."""
    def m(text):
        return _marker(tokenizer, text)

    named = {}
    lines = []
    triggers = []
    fns = [f"fn-{i}" for i in range(len(tools))]
    if fmt == "hermes":
        named["call"] = _any_of([_call_schema(t) for t in tools])
        lines += [f"block ::= {m(tc.HERMES_OPEN)} space call space {m(tc.HERMES_CLOSE)}",
                  f"root ::= {_repeat('block', parallel)}"]
        triggers.append(("word", tc.HERMES_OPEN))
    elif fmt == "llama3":
        plain = [t for t in tools if _name(t) not in builtin_tools]
        builtin = [t for t in tools if _name(t) in builtin_tools]
        roots = []
        if plain:
            named["call"] = _any_of([_call_schema(t, "parameters") for t in plain])
            roots.append("call")
            triggers.append(("start", r'\{\s*"name"'))
        if builtin:
            # <|python_tag|>name.call(query="...") -- Llama 3.1's built-in tools
            named["py-arg"] = {"type": "string"}
            lines.append("py ::= " + m(tc.PYTHON_TAG) + " (" + _alternatives(
                literal(f"{_name(t)}.call({tc.BUILTIN_TOOLS[_name(t)]}=") for t in builtin)
                + ") py-arg \")\"")
            roots.append("py")
            triggers.append(("word", tc.PYTHON_TAG))
        lines.append(f"root ::= {_alternatives(roots)}")
    elif fmt == "mistral_nemo":
        named["calls"] = _array(_any_of([_call_schema(t, id_key="id") for t in tools]),
                                parallel)
        lines.append(f"root ::= {m(tc.MISTRAL_CALLS)} calls")
        triggers.append(("word", tc.MISTRAL_CALLS))
    elif fmt in ("firefunction_v2", "granite"):
        named["calls"] = _array(_any_of([_call_schema(t) for t in tools]), parallel)
        mark = tc.FUNCTOOLS[:-1] if fmt == "firefunction_v2" else tc.GRANITE_CALL
        lines.append(f"root ::= {m(mark)} calls")
        triggers.append(("word", mark))
    elif fmt == "command_r7b":
        named["calls"] = _array(_any_of([_action_schema(t) for t in tools]), parallel)
        lines.append(f"root ::= {m(tc.CR_ACTION[0])} calls {m(tc.CR_ACTION[1])}")
        triggers.append(("word", tc.CR_ACTION[0]))
    elif fmt == "deepseek_r1":
        for fn, t in zip(fns, tools):
            named[f"{fn}-args"] = _params(t)
            lines.append(f'{fn} ::= {literal(_name(t))} "\\n```json\\n" {fn}-args "```"')
        calls = _repeat("call", parallel, NEWLINE + "?")
        lines += [f"call ::= {m(tc.DS_CALL_BEGIN)} \"function\" {m(tc.DS_SEP)} "
                  f"({_alternatives(fns)}) {m(tc.DS_CALL_END)}",
                  f"root ::= {m(tc.DS_CALLS_BEGIN)} {calls} {m(tc.DS_CALLS_END)}"]
        triggers.append(("word", tc.DS_CALLS_BEGIN))
    elif fmt == "functionary_v3_1":
        for fn, t in zip(fns, tools):
            named[f"{fn}-args"] = _params(t)
            lines.append(f"{fn} ::= {m(tc.FUNCTION_OPEN)} {literal(_name(t) + '>')} {fn}-args "
                         f"{m(tc.FUNCTION_CLOSE)}")
        lines.append(f"root ::= {_repeat('(' + _alternatives(fns) + ')', parallel)}")
        triggers.append(("word", tc.FUNCTION_OPEN))
    elif fmt == "functionary_v3_2":
        for fn, t in zip(fns, tools):
            named[f"{fn}-args"] = _params(t)
            lines.append(f"{fn} ::= {literal(_name(t) + chr(10))} {fn}-args")
        call = "(" + _alternatives(fns) + ")"
        lines.append(f"root ::= {m(tc.RECIPIENT)}? {_repeat(call, parallel, m(tc.RECIPIENT))}")
        triggers.append(("word", tc.RECIPIENT))
        triggers.append(("start", "(?:" + "|".join(re.escape(_name(t)) for t in tools)
                         + ")\n"))
    elif fmt == "qwen3_coder":
        lines.append('xml-text ::= ([^<] | "<" [^/])*')
        for fn, t in zip(fns, tools):
            schema = _params(t)
            props = schema.get("properties") if isinstance(schema.get("properties"), dict) \
                else {}
            required = schema.get("required") if isinstance(schema.get("required"), list) else []
            params = []
            for j, (key, sub) in enumerate(props.items()):
                value = f"{fn}-p{j}"
                if isinstance(sub, dict) and sub.get("type") == "string":
                    lines.append(f"{value} ::= xml-text")
                else:
                    named[value] = sub if isinstance(sub, (dict, bool)) else {}
                param = (f"{m(tc.PARAMETER_OPEN)} {literal(key + '>')} \"\\n\" {value} \"\\n\" "
                         f"{m(tc.PARAMETER_CLOSE)} \"\\n\"")
                params.append(f"({param})" + ("" if key in required else "?"))
            lines.append(f"{fn} ::= {m(tc.FUNCTION_OPEN)} {literal(_name(t) + '>')} \"\\n\" "
                         f"{' '.join(params)} {m(tc.FUNCTION_CLOSE)}")
        lines += [f"block ::= ({m(tc.HERMES_OPEN)} \"\\n\")? ({_alternatives(fns)}) \"\\n\" "
                  f"{m(tc.HERMES_CLOSE)}",
                  f"root ::= {_repeat('block', parallel, NEWLINE)}"]
        triggers += [("word", tc.HERMES_OPEN), ("word", tc.FUNCTION_OPEN)]
    elif fmt == "gpt_oss":
        channel = f"{m(tc.OSS_CHANNEL)} (\"commentary\" | \"analysis\")"
        for fn, t in zip(fns, tools):
            named[f"{fn}-args"] = _params(t)
            to = literal(tc.OSS_TO + _name(t))
            lines.append(f"{fn} ::= ({to} {channel} | {channel} {to}) "
                         f"(\" \" {m(tc.OSS_CONSTRAIN)} \"json\")? {m(tc.OSS_MESSAGE)} "
                         f"{fn}-args")
        lines.append(f"root ::= ({m(tc.OSS_START)} \"assistant\")? ({_alternatives(fns)})")
        triggers += [("word", tc.OSS_TO), ("word", tc.OSS_CHANNEL + "commentary" + tc.OSS_TO),
                     ("word", tc.OSS_CHANNEL + "analysis" + tc.OSS_TO)]
    else:
        return None
    text = schema_rules(named) + "\n".join(lines) + "\n"
    compiled = []
    for kind, value in triggers:
        compiled.append((kind, value.encode() if kind == "word"
                         else re.compile(value.encode())))
    return text, compiled


def builtin_tools(fmt, template_source, tools):
    """The tools a Llama 3.1 template calls as built-ins (brave_search, wolfram_alpha,
    code_interpreter...): its `builtin_tools` variable, as llama.cpp sets it."""
    if fmt != "llama3" or tc.PYTHON_TAG not in (template_source or ""):
        return []
    return [_name(t) for t in tools if _name(t) in tc.BUILTIN_TOOLS]


class LazyConstraint:
    """Free decoding until a trigger, then the rest held to the grammar (see the module
    docstring). `thinking`: "forced" when the prompt opened <think>, "maybe" when the
    template's model may open one: triggers count only after </think>."""

    def __init__(self, tokenizer, grammar_text, triggers, thinking=None):
        self.tokenizer = tokenizer
        self.automaton = automaton(grammar_text)
        self.triggers = triggers
        self.thinking = thinking
        self.inner = None
        self.given_up = False
        self.out = b""
        self.spans = []         # (token, start, end) in self.out

    def sample(self, sampler, logits, history):
        if self.inner is not None:
            return self.inner.sample(sampler, logits, history)
        return sampler.sample(logits, history)

    def advance(self, token):
        if self.inner is not None:
            return self.inner.advance(token)
        piece = self.tokenizer.token_to_piece(token)
        self.spans.append((token, len(self.out), len(self.out) + len(piece)))
        self.out += piece
        if self.given_up:
            return False
        start = self._trigger()
        return False if start is None else self._begin(start)

    def _search_from(self):
        """Where triggers may be looked for (after any reasoning), or None for not yet."""
        out = self.out
        if self.thinking == "forced" or (self.thinking == "maybe"
                                         and out.lstrip().startswith(tc.THINK_OPEN.encode())):
            end = out.find(tc.THINK_CLOSE.encode())
            return None if end < 0 else end + len(tc.THINK_CLOSE)
        if self.thinking == "maybe" and out.strip() and tc.THINK_OPEN.encode().startswith(
                out.lstrip()):
            return None
        return 0

    def _trigger(self):
        begin = self._search_from()
        if begin is None:
            return None
        best = None
        for kind, value in self.triggers:
            if kind == "word":
                i = self.out.find(value, begin)
            else:
                lead = begin + len(self.out[begin:]) - len(self.out[begin:].lstrip())
                i = lead if value.match(self.out, lead) else -1
            if i >= 0 and (best is None or i < best):
                best = i
        return best

    def _begin(self, start):
        """Replay the reply from `start` into the grammar; True when already complete."""
        inner = Constraint(self.tokenizer, self.automaton)
        done = False
        for token, lo, hi in self.spans:
            if hi <= start:
                continue
            if lo < start:      # the trigger starts inside this token: its tail only
                inner.state = self.automaton.feed(inner.state, self.out[start:hi])
            else:
                done = inner.advance(token)
            if not inner.state.stacks:
                self.given_up = True        # not the format after all: leave it free
                return False
        self.inner = inner
        return done or inner.state.final
