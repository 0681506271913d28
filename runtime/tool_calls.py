"""A model's reply as a message: content, reasoning and tool calls.

Models write tool calls in their own text format, which their chat template teaches
them. We recognise the family from the template source the way llama.cpp does and
parse the reply with that family's parser:

  hermes        Hermes 2 Pro, Qwen 2.5, Qwen 3:  <tool_call>{"name": .., "arguments": ..}</tool_call>
  llama3        Llama 3.x:  {"name": .., "parameters": ..}  or  <|python_tag|>name.call(k="v")
  mistral_nemo  Mistral Nemo:  [TOOL_CALLS][{"name": .., "arguments": .., "id": ..}]
  deepseek_r1   DeepSeek R1:  <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>name
                ```json {..}```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
  functionary_v3_1  Functionary v3.1 (Llama 3.1):  <function=name>{..}</function>
  functionary_v3_2  Functionary v3.2:  all\n<text>  or  name\n{..}, further ones after >>>
  firefunction_v2   FireFunction v2:  functools[{"name": .., "arguments": ..}]
  command_r7b   Command R7B:  <|START_THINKING|>..<|END_THINKING|><|START_ACTION|>[{"tool_call_id":
                .., "tool_name": .., "parameters": ..}]<|END_ACTION|>, text in <|START_RESPONSE|>
  granite       Granite 3.x:  <|tool_call|>[{"name": .., "arguments": ..}]
  gpt_oss       GPT-OSS (harmony):  <|channel|>analysis<|message|>..<|end|><|start|>assistant
                <|channel|>commentary to=functions.name <|constrain|>json<|message|>{..}
  qwen3_coder   Qwen3-Coder (and Nemotron Nano 3, Qwen 3.5):  <tool_call>\n<function=name>\n
                <parameter=key>\nvalue\n</parameter>\n</function>\n</tool_call>
  generic       any other template: the whole reply is JSON, constrained while decoding,
                {"response": ".."} or {"tool_call": {..}} or {"tool_calls": [{..}]}

Reasoning models (Qwen3, DeepSeek-R1) think inside <think>...</think> first; with
reasoning format "deepseek" that text becomes `reasoning_content`.

Streaming: the reply so far is parsed as a prefix (`partial=True`), which holds back
anything that could still turn into a marker, and each step's message is compared
with the last one; the differences are the deltas a client receives. Arguments are
the model's own JSON text, so they only ever grow.

Standard library only: this runs on a bare python3.
"""

import json
import random
import re
import string

from runtime.sampling import partial_stop_suffix    # text that may begin a marker

FORMATS = ("content", "generic", "hermes", "llama3", "mistral_nemo", "deepseek_r1",
           "functionary_v3_1", "functionary_v3_2", "firefunction_v2", "command_r7b", "granite",
           "qwen3_coder", "gpt_oss")
REASONING_FORMATS = ("none", "deepseek", "auto")

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"
DS_CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
# Spellings DeepSeek R1 distills write the opening marker in (llama.cpp accepts them too).
DS_BEGINS = (DS_CALLS_BEGIN, "<｜tool_calls_begin｜>", "<｜tool calls begin｜>",
             "<｜tool\\_calls\\_begin｜>", "<｜tool▁call▁begin｜>")
DS_CALL_BEGIN, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>"
DS_CALL_END, DS_CALLS_END = "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>"
FUNCTION_OPEN, FUNCTION_CLOSE = "<function=", "</function>"
PARAMETER_OPEN, PARAMETER_CLOSE = "<parameter=", "</parameter>"
RECIPIENT = ">>>"
FUNCTOOLS = " functools["
CR_THINK = ("<|START_THINKING|>", "<|END_THINKING|>")
CR_RESPONSE = ("<|START_RESPONSE|>", "<|END_RESPONSE|>")
CR_ACTION = ("<|START_ACTION|>", "<|END_ACTION|>")
GRANITE_CALL = "<|tool_call|>"
OSS_START, OSS_CHANNEL, OSS_MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
OSS_CONSTRAIN, OSS_ENDS = "<|constrain|>", ("<|end|>", "<|call|>", "<|return|>")
OSS_TO = " to=functions."
# Llama 3.1's built-in tools (the template's `builtin_tools`), called as
# <|python_tag|>name.call(arg="..."), and the argument each one takes.
BUILTIN_TOOLS = {"brave_search": "query", "web_search": "query", "wolfram_alpha": "query",
                 "code_interpreter": "code", "python": "code"}


def detect_format(template_source):
    """The tool-call family a chat template teaches, from its source text (the markers
    llama.cpp's common/chat.cpp looks for; most specific first)."""
    src = template_source or ""
    if OSS_CHANNEL in src:
        return "gpt_oss"
    if DS_CALLS_BEGIN in src:
        return "deepseek_r1"
    if ">>>all" in src:
        return "functionary_v3_2"
    if CR_ACTION[0] in src and "<|START_TEXT|>" not in src:
        return "command_r7b"
    if FUNCTOOLS.strip() in src:
        return "firefunction_v2"
    if HERMES_OPEN in src and FUNCTION_OPEN in src and PARAMETER_OPEN in src:
        return "qwen3_coder"
    if FUNCTION_OPEN in src:
        return "functionary_v3_1"
    if GRANITE_CALL in src:
        return "granite"
    if HERMES_OPEN in src:
        return "hermes"
    if MISTRAL_CALLS in src:
        return "mistral_nemo"
    if "<|start_header_id|>ipython<|end_header_id|>" in src or PYTHON_TAG in src:
        return "llama3"
    return "generic"


def template_thinks(template_source):
    """Whether the template is a reasoning model's (writes <think> blocks)."""
    return THINK_OPEN in (template_source or "")


# Families whose plain replies are wrapped in markers of their own (Functionary v3.2's
# `all\n` recipient, Command R7B's response and thinking blocks, GPT-OSS's channels),
# and which split reasoning out with their own markers. llama-server parses their
# replies with the family's parser whether or not the request has tools.
CONTENT_WRAPPED = ("functionary_v3_2", "command_r7b", "gpt_oss")


def reply_format(template_source, use_tools):
    """The format a reply is parsed with: the template's family when tool calls may
    come, else the family only where plain replies carry its markers."""
    fmt = detect_format(template_source)
    return fmt if use_tools or fmt in CONTENT_WRAPPED else "content"


def reasons(template_source):
    """Whether replies may carry reasoning to split out: <think> blocks, or a family
    with reasoning markers of its own."""
    return template_thinks(template_source) or detect_format(template_source) in (
        "command_r7b", "gpt_oss")


MARKERS = {
    "hermes": [HERMES_OPEN, HERMES_CLOSE], "llama3": [PYTHON_TAG],
    "mistral_nemo": [MISTRAL_CALLS],
    "deepseek_r1": list(DS_BEGINS) + [DS_SEP, DS_CALL_END, DS_CALLS_END],
    "functionary_v3_1": [FUNCTION_OPEN, FUNCTION_CLOSE, PYTHON_TAG],
    "functionary_v3_2": [RECIPIENT], "firefunction_v2": [FUNCTOOLS],
    "command_r7b": list(CR_THINK + CR_RESPONSE + CR_ACTION), "granite": [GRANITE_CALL],
    "qwen3_coder": [HERMES_OPEN, HERMES_CLOSE, FUNCTION_OPEN, FUNCTION_CLOSE, PARAMETER_OPEN,
                    PARAMETER_CLOSE],
    "gpt_oss": [OSS_START, OSS_CHANNEL, OSS_MESSAGE, OSS_CONSTRAIN] + list(OSS_ENDS),
}


def markers(fmt):
    """Marker texts the parser reads, which the decoder must show even when the
    vocabulary makes them control tokens."""
    return MARKERS.get(fmt, []) + [THINK_OPEN, THINK_CLOSE]


def new_call_id(fmt):
    """An id for a tool call the model did not name: Mistral's templates insist on
    9 letters or digits; others take llama-server's 32."""
    n = 9 if fmt == "mistral_nemo" else 32
    return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(n))


class ToolCall:
    def __init__(self, name, arguments, call_id=""):
        self.name = name
        self.arguments = arguments      # the JSON text of the arguments
        self.id = call_id

    def __eq__(self, other):
        return (self.name, self.arguments, self.id) == (other.name, other.arguments, other.id)

    def __repr__(self):
        return f"ToolCall({self.name!r}, {self.arguments!r}, {self.id!r})"


class Message:
    """An assistant message: content, reasoning_content and tool_calls."""

    def __init__(self, content="", reasoning_content="", tool_calls=None):
        self.content = content
        self.reasoning_content = reasoning_content
        self.tool_calls = list(tool_calls or [])

    def __repr__(self):
        return (f"Message(content={self.content!r}, reasoning_content="
                f"{self.reasoning_content!r}, tool_calls={self.tool_calls!r})")


# ---------------------------------------------------------------- JSON prefixes

class _Cut(Exception):
    """The text ended inside a value; `value` is what was read of it (or _NONE)."""

    def __init__(self, value):
        super().__init__()
        self.value = value


_NONE = object()
_WS = " \t\n\r"
_LITERALS = {"true": True, "false": False, "null": None}
_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


class JsonScan:
    """Reads one JSON value from text that may stop anywhere inside it.

    `spans[path]` is where each object member's value starts and ends (end None when
    the text stops inside it); a path is a tuple of keys and array indexes.
    """

    def __init__(self, text):
        self.s = text
        self.spans = {}

    def value_at(self, i, path=()):
        """(value, end). Raises _Cut when the text stops inside, ValueError when it
        is not JSON."""
        s = self.s
        i = self._ws(i)
        if i >= len(s):
            raise _Cut(_NONE)
        c = s[i]
        if c == "{":
            return self._object(i + 1, path)
        if c == "[":
            return self._array(i + 1, path)
        if c == '"':
            return self._string(i + 1)
        for word, value in _LITERALS.items():
            if s.startswith(word, i):
                return value, i + len(word)
            if word.startswith(s[i:]):
                raise _Cut(_NONE)
        m = _NUMBER.match(s, i)
        if m and m.end() > i:
            if m.end() == len(s):
                raise _Cut(_NONE)       # more digits may follow
            text = m.group(0)
            return (float(text) if any(ch in text for ch in ".eE") else int(text)), m.end()
        if c == "-" and i + 1 == len(s):
            raise _Cut(_NONE)
        raise ValueError(f"not JSON at {i}")

    def _ws(self, i):
        s = self.s
        while i < len(s) and s[i] in _WS:
            i += 1
        return i

    def _string(self, i):
        s = self.s
        out = []
        while True:
            j = i
            while j < len(s) and s[j] not in '"\\':
                j += 1
            out.append(s[i:j])
            if j >= len(s):
                raise _Cut("".join(out))
            if s[j] == '"':
                return "".join(out), j + 1
            if j + 1 >= len(s):
                raise _Cut("".join(out))
            esc = s[j + 1]
            if esc == "u":
                digits = s[j + 2:j + 6]
                if len(digits) < 4:
                    raise _Cut("".join(out))
                code = int(digits, 16)
                if 0xD800 <= code < 0xDC00 and s[j + 6:j + 8] == "\\u":
                    low = s[j + 8:j + 12]
                    if len(low) < 4:
                        raise _Cut("".join(out))
                    code = 0x10000 + ((code - 0xD800) << 10) + (int(low, 16) - 0xDC00)
                    j += 6
                out.append(chr(code))
                i = j + 6
            else:
                simple = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n",
                          "r": "\r", "t": "\t"}
                if esc not in simple:
                    raise ValueError(f"bad escape at {j}")
                out.append(simple[esc])
                i = j + 2

    def _object(self, i, path):
        s = self.s
        obj = {}
        i = self._ws(i)
        if i < len(s) and s[i] == "}":
            return obj, i + 1
        while True:
            i = self._ws(i)
            if i >= len(s):
                raise _Cut(obj)
            if s[i] != '"':
                raise ValueError(f"expected a key at {i}")
            try:
                key, i = self._string(i + 1)
            except _Cut:
                raise _Cut(obj) from None
            i = self._ws(i)
            if i >= len(s):
                raise _Cut(obj)
            if s[i] != ":":
                raise ValueError(f"expected ':' at {i}")
            start = self._ws(i + 1)
            try:
                value, i = self.value_at(start, path + (key,))
            except _Cut as cut:
                self.spans[path + (key,)] = (start, None)
                if cut.value is not _NONE:
                    obj[key] = cut.value
                raise _Cut(obj) from None
            self.spans[path + (key,)] = (start, i)
            obj[key] = value
            i = self._ws(i)
            if i >= len(s):
                raise _Cut(obj)
            if s[i] == "}":
                return obj, i + 1
            if s[i] != ",":
                raise ValueError(f"expected ',' or '}}' at {i}")
            i += 1

    def _array(self, i, path):
        s = self.s
        arr = []
        i = self._ws(i)
        if i < len(s) and s[i] == "]":
            return arr, i + 1
        while True:
            try:
                value, i = self.value_at(i, path + (len(arr),))
            except _Cut as cut:
                if cut.value is not _NONE:
                    arr.append(cut.value)
                raise _Cut(arr) from None
            arr.append(value)
            i = self._ws(i)
            if i >= len(s):
                raise _Cut(arr)
            if s[i] == "]":
                return arr, i + 1
            if s[i] != ",":
                raise ValueError(f"expected ',' or ']' at {i}")
            i += 1

    def raw(self, path):
        """The text of the member at `path` as written so far, or None."""
        span = self.spans.get(path)
        if span is None:
            return None
        start, end = span
        return self.s[start:] if end is None else self.s[start:end]


def scan_json(text, start=0):
    """(value, end, complete, scan) for the JSON value at text[start:]; a value cut
    short comes back as far as it goes with complete False. ValueError when the text
    is not (a prefix of) JSON."""
    scan = JsonScan(text)
    try:
        value, end = scan.value_at(start)
        return value, end, True, scan
    except _Cut as cut:
        return (None if cut.value is _NONE else cut.value), len(text), False, scan


def _call_from(scan, obj, path, complete, args_keys=("arguments", "parameters"),
               wait_for_id=False):
    """A ToolCall from a parsed call object, or None while its name (or, with
    `wait_for_id`, its id, which Mistral writes last) is still unknown."""
    if not isinstance(obj, dict):
        return None
    id_span = scan.spans.get(path + ("id",))
    if wait_for_id and not complete and (id_span is None or id_span[1] is None):
        return None
    name_span = scan.spans.get(path + ("name",))
    if not isinstance(obj.get("name"), str) or name_span is None or name_span[1] is None:
        return None
    arguments = ""
    for key in args_keys:
        raw = scan.raw(path + (key,))
        if raw is not None:
            arguments = raw
            break
    if complete and not arguments:
        arguments = "{}"
    call_id = obj.get("id") if isinstance(obj.get("id"), str) else ""
    if call_id and (id_span is None or id_span[1] is None):
        call_id = ""        # still being written
    return ToolCall(obj["name"], arguments, call_id)


# ---------------------------------------------------------------- the parser

class OutputParser:
    """Parses a reply of one format into a Message.

    `fmt`: one of FORMATS ("content": no tool calls are read).
    `reasoning_format`: "none" leaves <think> blocks in the content.
    `thinking_forced_open`: the prompt ended inside <think>, so the reply starts
    with reasoning.
    `calls`: False when the request offered no tools (or tool_choice none): the
    family's markers around plain content and reasoning are still read, as
    llama-server does, but nothing becomes a tool call.
    """

    def __init__(self, fmt="content", reasoning_format="deepseek", thinking_forced_open=False,
                 tools=(), calls=True):
        if fmt not in FORMATS:
            raise ValueError(f"unknown tool-call format {fmt!r}")
        self.fmt = fmt
        # Parameter schemas by function name: Qwen3-Coder writes values bare, and only the
        # schema says whether `1` is the string "1" or the number.
        self.params = {tool_function(t).get("name"): tool_function(t).get("parameters") or {}
                       for t in tools}
        self.reasoning = reasoning_format != "none"
        self.forced_open = thinking_forced_open and self.reasoning
        self.calls = calls

    def parse(self, text, partial=False):
        msg = Message()
        rest = self._reasoning(text, partial, msg)
        if rest is None:
            return msg
        getattr(self, "_parse_" + self.fmt)(rest, partial, msg)
        return msg

    # ---- reasoning ----

    def _reasoning(self, text, partial, msg):
        """Move the <think> block into msg.reasoning_content; the rest of the text, or
        None when everything so far is (or may be) reasoning."""
        if not self.reasoning:
            return text
        if not self.forced_open:
            stripped = text.lstrip()
            if partial and stripped and THINK_OPEN.startswith(stripped):
                return None     # may still become <think>
            if not stripped.startswith(THINK_OPEN):
                return text
            text = stripped[len(THINK_OPEN):]
        end = text.find(THINK_CLOSE)
        if end < 0:
            thought = text
            if partial:
                thought = thought[:len(thought) - partial_stop_suffix(thought, [THINK_CLOSE])].rstrip()
            msg.reasoning_content = thought.strip()
            return None
        msg.reasoning_content = text[:end].strip()
        return text[end + len(THINK_CLOSE):].lstrip()

    # ---- formats ----

    @staticmethod
    def _content(msg, text, partial, marks=()):
        if partial:
            text = text[:len(text) - partial_stop_suffix(text, marks)].rstrip()
        msg.content += text

    def _parse_content(self, text, partial, msg):
        self._content(msg, text, partial)

    def _parse_hermes(self, text, partial, msg):
        pos = 0
        while True:
            start = text.find(HERMES_OPEN, pos)
            if start < 0:
                tail = text[pos:]
                if msg.tool_calls and not partial:
                    tail = tail.strip()
                self._content(msg, tail, partial, [HERMES_OPEN])
                return
            before = text[pos:start]
            self._content(msg, before.rstrip() if not msg.tool_calls else before.strip(), False)
            body = start + len(HERMES_OPEN)
            try:
                obj, end, complete, scan = scan_json(text, body)
            except ValueError:
                # Not a JSON call after all: the marker and what follows are content.
                self._content(msg, text[start:], partial, [])
                return
            call = _call_from(scan, obj, (), complete)
            if call is not None:
                msg.tool_calls.append(call)
            if not complete:
                return
            close = text.find(HERMES_CLOSE, end)
            if close < 0:
                return      # the closing tag is optional at the very end
            pos = close + len(HERMES_CLOSE)

    def _parse_llama3(self, text, partial, msg):
        tag = text.find(PYTHON_TAG)
        if tag >= 0:
            self._content(msg, text[:tag].rstrip(), False)
            body = text[tag + len(PYTHON_TAG):].lstrip()
            if body.startswith("{"):
                self._json_calls(body, partial, msg, allow_content=False)
            elif not partial:
                call = _python_call(body)
                if call is not None:
                    msg.tool_calls.append(call)
                else:
                    msg.content += body
            return
        if text.lstrip().startswith("{"):
            self._json_calls(text.lstrip(), partial, msg, allow_content=True)
            return
        self._content(msg, text, partial, [PYTHON_TAG])

    def _json_calls(self, text, partial, msg, allow_content):
        """Llama 3.x's bare JSON call: {"name": .., "parameters": ..}."""
        try:
            obj, end, complete, scan = scan_json(text)
        except ValueError:
            obj, complete = None, True
        looks_like_call = isinstance(obj, dict) and (
            "name" in obj or "parameters" in obj or obj.get("type") == "function"
            or (not complete and len(obj) == 0))
        if looks_like_call and (partial or complete and text[end:].strip() in ("", ";")):
            call = _call_from(scan, obj, (), complete)
            if call is not None and (partial or "parameters" in obj or "arguments" in obj):
                msg.tool_calls.append(call)
                return
            if partial and not complete:
                return      # undecided yet: hold it back
        if allow_content:
            self._content(msg, text, partial, [PYTHON_TAG])

    def _parse_mistral_nemo(self, text, partial, msg):
        start = text.find(MISTRAL_CALLS)
        if start < 0:
            self._content(msg, text, partial, [MISTRAL_CALLS])
            return
        self._content(msg, text[:start].rstrip(), False)
        try:
            arr, _end, complete, scan = scan_json(text, start + len(MISTRAL_CALLS))
        except ValueError:
            msg.content += text[start:]
            return
        if isinstance(arr, dict):
            arr = [arr]
            scan.spans = {(0,) + k: v for k, v in scan.spans.items()}
        for i, obj in enumerate(arr if isinstance(arr, list) else []):
            call = _call_from(scan, obj, (i,), complete or i < len(arr) - 1,
                              wait_for_id=True)
            if call is not None:
                msg.tool_calls.append(call)

    def _marked_json(self, text, partial, msg, opens, close=None):
        """Content, then after the first of `opens` one JSON value (an array of calls or
        one call), then optionally `close`: the shape of several formats."""
        start, mark = _find_first(text, opens)
        if start < 0:
            self._content(msg, text, partial, opens)
            return None
        self._content(msg, text[:start].rstrip(), False)
        try:
            value, end, complete, scan = scan_json(text, start + len(mark))
        except ValueError:
            msg.content += text[start:]
            return None
        return value, complete, scan

    def _calls_from_array(self, found, msg, name_key="name", args_key="arguments",
                          id_key=None):
        if found is None:
            return
        arr, complete, scan = found
        if isinstance(arr, dict):
            arr = [arr]
            scan.spans = {(0,) + k: v for k, v in scan.spans.items()}
        if not isinstance(arr, list):
            return
        for i, obj in enumerate(arr):
            if not isinstance(obj, dict):
                continue
            if name_key != "name" and name_key in obj:
                obj = dict(obj, name=obj[name_key])
                scan.spans[(i, "name")] = scan.spans.get((i, name_key))
            if id_key and id_key in obj:
                obj = dict(obj, id=obj[id_key])
                scan.spans[(i, "id")] = scan.spans.get((i, id_key))
            call = _call_from(scan, obj, (i,), complete or i < len(arr) - 1,
                              args_keys=(args_key,), wait_for_id=bool(id_key))
            if call is not None:
                msg.tool_calls.append(call)

    def _parse_firefunction_v2(self, text, partial, msg):
        found = self._marked_json(text, partial, msg, [FUNCTOOLS[:-1]])
        self._calls_from_array(found, msg)

    def _parse_granite(self, text, partial, msg):
        self._calls_from_array(self._marked_json(text, partial, msg, [GRANITE_CALL]), msg)

    def _parse_deepseek_r1(self, text, partial, msg):
        start, mark = _find_first(text, DS_BEGINS)
        if start < 0:
            self._content(msg, text, partial, DS_BEGINS)
            return
        self._content(msg, text[:start].rstrip(), False)
        pos = start if mark == DS_CALL_BEGIN else start + len(mark)
        while True:
            begin = text.find(DS_CALL_BEGIN, pos)
            if begin < 0:
                return
            sep = text.find(DS_SEP, begin)
            name_end = text.find("\n", sep) if sep >= 0 else -1
            if name_end < 0:
                return          # the name is still being written
            name = text[sep + len(DS_SEP):name_end].strip()
            body = name_end + 1
            fence = "```json"
            if text.startswith(fence, body):
                body += len(fence)
            elif fence.startswith(text[body:]):
                return
            try:
                _, end, complete, _ = scan_json(text, body)
            except ValueError:
                return
            first = len(text[:body]) + len(text[body:]) - len(text[body:].lstrip())
            msg.tool_calls.append(ToolCall(name, text[first:end] if end > first else ""))
            if not complete:
                return
            pos = end

    def _parse_functionary_v3_1(self, text, partial, msg):
        pos = 0
        while True:
            start, mark = _find_first(text, [FUNCTION_OPEN, PYTHON_TAG], pos)
            before = text[pos:] if start < 0 else text[pos:start]
            if msg.tool_calls:
                before = before.strip() if start >= 0 or not partial else before.lstrip()
            if start < 0:
                self._content(msg, before, partial, [FUNCTION_OPEN, PYTHON_TAG])
                return
            self._content(msg, before.rstrip(), False)
            if mark == PYTHON_TAG:
                # Raw code for the python tool, read once the reply is whole.
                if not partial:
                    code = text[start + len(PYTHON_TAG):]
                    msg.tool_calls.append(ToolCall("python", json.dumps({"code": code},
                                                                         ensure_ascii=False)))
                return
            close = text.find(">", start)
            if close < 0:
                return
            name = text[start + len(FUNCTION_OPEN):close]
            try:
                _, end, complete, _ = scan_json(text, close + 1)
            except ValueError:
                msg.content += text[start:]
                return
            first = close + 1 + len(text[close + 1:]) - len(text[close + 1:].lstrip())
            msg.tool_calls.append(ToolCall(name, text[first:end]))
            if not complete:
                return
            end_tag = text.find(FUNCTION_CLOSE, end)
            if end_tag < 0:
                return
            pos = end_tag + len(FUNCTION_CLOSE)

    def _parse_functionary_v3_2(self, text, partial, msg):
        if not self.calls:
            # no tools: the reply is `all\n` and its content to the end, >>> included
            head = "all\n"
            if partial and head.startswith(text):
                return
            self._content(msg, text[len(head):] if text.startswith(head) else text, partial)
            return
        segments = text.split(RECIPIENT)
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            if i == 0 and not seg and not last:
                continue        # the reply opened with >>> itself
            name, newline, body = seg.partition("\n")
            if not newline:
                if not (partial and last) and seg.strip():
                    msg.content += seg      # no recipient line: the model's words as they are
                return
            name = name.strip()
            if name == "all":
                if last:
                    self._content(msg, body, partial, [RECIPIENT])
                else:
                    msg.content += body.rstrip("\n")
                continue
            try:
                _, end, complete, _ = scan_json(body)
            except ValueError:
                if name == "python" and (not partial or not last):
                    msg.tool_calls.append(ToolCall("python", json.dumps(
                        {"code": body}, ensure_ascii=False)))
                continue
            first = len(body) - len(body.lstrip())
            msg.tool_calls.append(ToolCall(name, body[first:end]))
            if not complete:
                return

    def _parse_command_r7b(self, text, partial, msg):
        rest = text
        think_open, think_close = CR_THINK
        lead = rest.lstrip()
        if lead.startswith(think_open):
            inner = lead[len(think_open):]
            end = inner.find(think_close)
            if end < 0:
                held = partial_stop_suffix(inner, [think_close]) if partial else 0
                msg.reasoning_content = inner[:len(inner) - held].strip()
                return
            msg.reasoning_content = inner[:end].strip()
            rest = inner[end + len(think_close):]
        elif partial and lead and think_open.startswith(lead):
            return
        if not self.reasoning and msg.reasoning_content:
            msg.content = text[:len(text) - len(rest)]
            msg.reasoning_content = ""
        open_r, close_r = CR_RESPONSE
        opens = [open_r, CR_ACTION[0]] if self.calls else [open_r]
        start, mark = _find_first(rest, opens)
        if start < 0:
            self._content(msg, rest, partial, opens)
            return
        if mark == open_r:
            body = rest[start + len(open_r):]
            end = body.find(close_r)
            self._content(msg, body if end < 0 else body[:end], partial and end < 0, [close_r])
            return
        found = self._marked_json(rest[start:], partial, Message(), [CR_ACTION[0]])
        self._calls_from_array(found, msg, name_key="tool_name", args_key="parameters",
                               id_key="tool_call_id")

    def _parse_qwen3_coder(self, text, partial, msg):
        pos = 0
        marks = [HERMES_OPEN, FUNCTION_OPEN]
        while True:
            start, mark = _find_first(text, marks, pos)
            if start < 0:
                tail = text[pos:]
                if msg.tool_calls:
                    tail = tail.strip() if not partial else tail.lstrip()
                self._content(msg, tail, partial, marks + [HERMES_CLOSE])
                return
            before = text[pos:start]
            self._content(msg, before.strip() if msg.tool_calls else before, False)
            fn = text.find(FUNCTION_OPEN, start)
            if mark == HERMES_OPEN and (fn < 0 or text[start + len(HERMES_OPEN):fn].strip()):
                if fn < 0 and partial:
                    return
                msg.content += text[start:]
                return
            close = text.find(">", fn)
            if close < 0:
                return
            name = text[fn + len(FUNCTION_OPEN):close]
            call, end = self._xml_call(text, close + 1, name, partial)
            if call is not None:
                msg.tool_calls.append(call)
            if end is None:
                return
            pos = end
            for tag in (HERMES_CLOSE,):
                j = text.find(tag, pos)
                if j >= 0 and not text[pos:j].strip():
                    pos = j + len(tag)

    def _parse_gpt_oss(self, text, partial, msg):
        """Harmony messages: a header (recipient, channel) then <|message|> and a body up
        to <|end|> / <|call|>. analysis is reasoning, final and commentary are content,
        a message to functions.NAME is a call; other recipients (built-in tools the
        request did not offer) are dropped."""
        pos = 0
        while pos < len(text):
            body_at = text.find(OSS_MESSAGE, pos)
            if body_at < 0:
                if not partial and not text[pos:].startswith((OSS_START, OSS_CHANNEL)):
                    msg.content += text[pos:]        # not harmony at all
                return
            header = text[pos:body_at]
            before, _, after = header.rpartition(OSS_CHANNEL)
            channel = after.split(" ")[0].split("<|")[0].strip()
            recipient = _recipient(after) or _recipient(before.rpartition(OSS_START)[2]
                                                        if OSS_START in before else before)
            start = body_at + len(OSS_MESSAGE)
            end, mark = _find_first(text, OSS_ENDS, start)
            body = text[start:] if end < 0 else text[start:end]
            if end < 0 and partial:
                body = body[:len(body) - partial_stop_suffix(body, list(OSS_ENDS) + [OSS_START])]
            if recipient and recipient.startswith("functions.") and not self.calls:
                msg.content += body         # no tools offered: the model's words as they are
            elif recipient and recipient.startswith("functions."):
                first = len(body) - len(body.lstrip())
                if body.strip():
                    msg.tool_calls.append(ToolCall(recipient[len("functions."):],
                                                   body[first:].rstrip()))
            elif recipient and recipient != "assistant":
                pass
            elif channel == "analysis":
                if self.reasoning:
                    msg.reasoning_content += body
                else:
                    msg.content += OSS_CHANNEL + "analysis" + OSS_MESSAGE + body + (
                        mark if end >= 0 else "")
            else:
                msg.content += body
            if end < 0:
                return
            pos = end + len(mark)

    def _xml_call(self, text, pos, name, partial):
        """<parameter=k>\nvalue\n</parameter>... up to </function>: (ToolCall, end or None)."""
        schema = self.params.get(name) or {}
        props = schema.get("properties") if isinstance(schema, dict) else None
        props = props if isinstance(props, dict) else {}
        parts = []
        while True:
            rest = text[pos:]
            skipped = len(rest) - len(rest.lstrip())
            pos += skipped
            if text.startswith(FUNCTION_CLOSE, pos):
                args = "{" + ", ".join(parts) + "}"
                return ToolCall(name, args), pos + len(FUNCTION_CLOSE)
            if not text.startswith(PARAMETER_OPEN, pos):
                return ToolCall(name, "{" + ", ".join(parts)), None
            close = text.find(">", pos)
            end = text.find(PARAMETER_CLOSE, close) if close >= 0 else -1
            if end < 0:
                return ToolCall(name, "{" + ", ".join(parts)), None
            key = text[pos + len(PARAMETER_OPEN):close]
            raw = text[close + 1:end]
            if raw.startswith("\n"):
                raw = raw[1:]
            if raw.endswith("\n"):
                raw = raw[:-1]
            parts.append(json.dumps(key, ensure_ascii=False) + ": " + _xml_value(raw, props.get(key)))
            pos = end + len(PARAMETER_CLOSE)

    def _parse_generic(self, text, partial, msg):
        try:
            obj, end, complete, scan = scan_json(text.lstrip())
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            if not partial or obj is None and text.strip() and not text.lstrip().startswith("{"):
                self._content(msg, text, partial)
            return
        if "response" in obj:
            response = obj["response"]
            if isinstance(response, str):
                msg.content += response
            elif complete:
                msg.content += json.dumps(response, ensure_ascii=False)
        if isinstance(obj.get("tool_call"), dict):
            call = _call_from(scan, obj["tool_call"], ("tool_call",), complete)
            if call is not None:
                msg.tool_calls.append(call)
        if isinstance(obj.get("tool_calls"), list):
            calls = obj["tool_calls"]
            for i, item in enumerate(calls):
                call = _call_from(scan, item, ("tool_calls", i), complete or i < len(calls) - 1)
                if call is not None:
                    call.id = ""    # ours to give: the shape has none, so streams agree
                    msg.tool_calls.append(call)
        if complete and not msg.tool_calls and "response" not in obj:
            msg.content = text      # JSON, but not ours: the model's words as they are


def _find_first(text, marks, pos=0):
    """(position, mark) of the earliest of `marks` in text[pos:], or (-1, None)."""
    best = (-1, None)
    for mark in marks:
        i = text.find(mark, pos)
        if i >= 0 and (best[0] < 0 or i < best[0]):
            best = (i, mark)
    return best


def _recipient(header):
    """The NAME of " to=NAME" in a harmony header, or None."""
    m = re.search(r"\bto=([^\s<]+)", header)
    return m.group(1) if m else None


def _xml_value(raw, schema):
    """A bare parameter value as JSON: a string unless its schema says otherwise and it
    parses as JSON."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind != "string":
        try:
            return json.dumps(json.loads(raw), ensure_ascii=False)
        except ValueError:
            pass
    return json.dumps(raw, ensure_ascii=False)


_PY_CALL = re.compile(r"^\s*([A-Za-z_][\w.]*?)\.call\((.*)\)\s*$", re.S)
_PY_ARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*")


def _python_call(text):
    """<|python_tag|>name.call(key="value", ...) to a ToolCall (Llama 3.1's builtin tools)."""
    m = _PY_CALL.match(text)
    if not m:
        return None
    name, inner = m.group(1), m.group(2)
    args = {}
    i = 0
    while i < len(inner):
        km = _PY_ARG.match(inner, i)
        if not km:
            return None
        i = km.end()
        try:
            value, i, complete, _ = scan_json(inner, i)
        except ValueError:
            return None
        if not complete:
            return None
        args[km.group(1)] = value
        while i < len(inner) and inner[i] in " ,":
            i += 1
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


# ---------------------------------------------------------------- streaming

class StreamParser:
    """Feeds a reply piece by piece; each step returns the deltas since the last:
    dicts with "reasoning_content", "content", or "tool_call" ({index, id, name,
    arguments}; id and name only in a call's first delta)."""

    def __init__(self, parser):
        self.parser = parser
        self.text = ""
        self.message = Message()
        self.ids = []

    def feed(self, piece):
        self.text += piece
        return self._update(self.parser.parse(self.text, partial=True))

    def finish(self):
        return self._update(self.parser.parse(self.text, partial=False))

    def parse_all(self, text):
        """The message of a whole reply at once."""
        self.text = text
        self.finish()
        return self.message

    def _update(self, new):
        for i, call in enumerate(new.tool_calls):
            if i >= len(self.ids):
                self.ids.append(call.id or new_call_id(self.parser.fmt))
            call.id = self.ids[i]
        deltas = []
        old = self.message
        add = _grown(old.reasoning_content, new.reasoning_content)
        if add:
            deltas.append({"reasoning_content": add})
        add = _grown(old.content, new.content)
        if add:
            deltas.append({"content": add})
        for i, call in enumerate(new.tool_calls):
            if i < len(old.tool_calls):
                add = _grown(old.tool_calls[i].arguments, call.arguments)
                if add:
                    deltas.append({"tool_call": {"index": i, "arguments": add}})
            else:
                deltas.append({"tool_call": {"index": i, "id": call.id, "name": call.name,
                                             "arguments": call.arguments}})
        # What was sent stays sent: keep the old texts where the new ones did not grow.
        merged = Message(new.content if new.content.startswith(old.content) else old.content,
                         new.reasoning_content
                         if new.reasoning_content.startswith(old.reasoning_content)
                         else old.reasoning_content)
        for i, call in enumerate(new.tool_calls):
            if i < len(old.tool_calls) and not call.arguments.startswith(
                    old.tool_calls[i].arguments):
                call = old.tool_calls[i]
            merged.tool_calls.append(call)
        merged.tool_calls += old.tool_calls[len(new.tool_calls):]
        self.message = merged
        return deltas


def _grown(old, new):
    """What `new` adds to `old`, when it extends it."""
    return new[len(old):] if len(new) > len(old) and new.startswith(old) else ""


def parse_reply(text, fmt="content", reasoning_format="deepseek", thinking_forced_open=False,
                tools=(), calls=True):
    """The message of a complete reply, with ids for its tool calls."""
    return StreamParser(OutputParser(fmt, reasoning_format, thinking_forced_open,
                                     tools, calls)).parse_all(text)


# ---------------------------------------------------------------- prompts and schemas

def tool_function(tool):
    """The function object of an OpenAI tool ({"type": "function", "function": {..}})."""
    return tool.get("function", tool) if isinstance(tool, dict) else {}


def generic_system_prompt(tools, parallel):
    """What a template without tool support is told: the tools and the JSON reply."""
    listing = json.dumps([tool_function(t) for t in tools], indent=2, ensure_ascii=False)
    if parallel:
        example = ('{"tool_calls": [{"name": "tool_name", "arguments": {"arg1": "value"}}]}')
    else:
        example = '{"tool_call": {"name": "tool_name", "arguments": {"arg1": "value"}}}'
    return ("You can call any of the following tools to satisfy the user's requests:\n"
            f"{listing}\n\n"
            "Respond in JSON format, either with `tool_call"
            f"{'s' if parallel else ''}` (a request to call tools) or with `response` "
            "(your reply to the user's request). A tool call looks like this:\n"
            f"{example}\nA reply looks like this:\n"
            '{"response": "Your reply to the user."}')


def calls_text(fmt, calls):
    """Earlier tool calls ([{"name", "arguments" (object), "id"}]) written the way `fmt`
    writes them: for templates that do not render tool calls themselves, and for the
    example in the system message of templates that do not list the tools."""
    def dumps(value):
        return json.dumps(value, ensure_ascii=False)
    named = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
    if fmt == "hermes":
        return "\n".join(f"{HERMES_OPEN}\n{dumps(c)}\n{HERMES_CLOSE}" for c in named)
    if fmt == "llama3":
        return "\n".join(dumps({"name": c["name"], "parameters": c["arguments"]}) for c in named)
    if fmt == "mistral_nemo":
        return MISTRAL_CALLS + dumps([dict(c, id=call["id"]) for c, call in zip(named, calls)])
    if fmt == "deepseek_r1":
        return DS_CALLS_BEGIN + "\n".join(
            f"{DS_CALL_BEGIN}function{DS_SEP}{c['name']}\n```json\n{dumps(c['arguments'])}\n```"
            f"{DS_CALL_END}" for c in named) + DS_CALLS_END
    if fmt == "functionary_v3_1":
        return "".join(f"{FUNCTION_OPEN}{c['name']}>{dumps(c['arguments'])}{FUNCTION_CLOSE}"
                       for c in named)
    if fmt == "functionary_v3_2":
        return RECIPIENT.join(f"{c['name']}\n{dumps(c['arguments'])}" for c in named)
    if fmt == "firefunction_v2":
        return FUNCTOOLS[:-1] + dumps(named)
    if fmt == "command_r7b":
        return CR_ACTION[0] + dumps([{"tool_call_id": call["id"], "tool_name": c["name"],
                                      "parameters": c["arguments"]}
                                     for c, call in zip(named, calls)]) + CR_ACTION[1]
    if fmt == "granite":
        return GRANITE_CALL + dumps(named)
    if fmt == "gpt_oss":
        return "".join(f"{OSS_START}assistant{OSS_CHANNEL}commentary to=functions.{c['name']} "
                       f"{OSS_CONSTRAIN}json{OSS_MESSAGE}{dumps(c['arguments'])}<|call|>"
                       for c in named)
    if fmt == "qwen3_coder":
        out = []
        for c in named:
            args = c["arguments"] if isinstance(c["arguments"], dict) else {}
            params = "".join(f"{PARAMETER_OPEN}{k}>\n{v if isinstance(v, str) else dumps(v)}\n"
                             f"{PARAMETER_CLOSE}\n" for k, v in args.items())
            out.append(f"{HERMES_OPEN}\n{FUNCTION_OPEN}{c['name']}>\n{params}{FUNCTION_CLOSE}\n"
                       f"{HERMES_CLOSE}")
        return "\n".join(out)
    with_ids = [dict(c, id=call["id"]) for c, call in zip(named, calls)]
    shape = {"tool_calls": with_ids} if len(with_ids) > 1 else {"tool_call": with_ids[0]}
    return dumps(shape)


def tools_system_prompt(fmt, tools):
    """What a template that lists no tools is told of them in a format of its own."""
    listing = json.dumps([tool_function(t) for t in tools], indent=2, ensure_ascii=False)
    example = calls_text(fmt, [{"name": "tool_name", "arguments": {"arg1": "value"},
                                "id": "123456789"}])
    return ("You can call any of the following tools to satisfy the user's requests:\n"
            f"{listing}\n\nExample tool call syntax:\n\n{example}\n")


def _call_object(tool):
    fn = tool_function(tool)
    params = fn.get("parameters")
    if not isinstance(params, dict) or not params:
        params = {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": fn.get("name", "")},
                                             "arguments": params},
            "required": ["name", "arguments"]}


def _any_of(schemas):
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def generic_schema(tools, parallel, allow_content):
    """The JSON schema a generic reply is held to: {"tool_call": ..} (or, with
    `parallel`, {"tool_calls": [..]}), or also {"response": ".."} when words are allowed.
    The other families' calls have grammars (runtime/tool_grammar.py)."""
    call = _any_of([_call_object(t) for t in tools])
    if parallel:
        calls = {"type": "object", "properties": {"tool_calls": {
            "type": "array", "items": call, "minItems": 1}}, "required": ["tool_calls"]}
    else:
        calls = {"type": "object", "properties": {"tool_call": call}, "required": ["tool_call"]}
    if not allow_content:
        return calls
    response = {"type": "object", "properties": {"response": {"type": "string"}},
                "required": ["response"]}
    return {"anyOf": [calls, response]}
