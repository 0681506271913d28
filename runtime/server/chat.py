"""A chat request, as every chat-shaped endpoint needs it (OpenAI chat completions,
Anthropic messages, OpenAI responses): the messages with their tool calls and tool
results, the tools and tool_choice, rendered through the model's chat template; the
constraint that makes a required tool call parse; and the reply read back as a
message (content, reasoning_content, tool_calls) whole or as streamed deltas.

Templates that know nothing of tools get what llama.cpp's polyfills give them: the
tools described in the system message, earlier tool calls written as the JSON the
model is asked to answer in, and tool results as user turns.
"""

import json

from runtime import tool_calls as tc
from runtime import tool_grammar
from runtime.server import params
from runtime.server.errors import ApiError

NO_MEDIA = ("image input is not supported - hint: if this is unexpected, you may need to "
            "provide the mmproj")
MEDIA_PARTS = {"image_url": "image", "input_image": "image", "input_audio": "audio",
               "input_video": "video", "video_url": "video"}


# ---------------------------------------------------------------- messages

def _text_of(content, where):
    """A message content (string, null, or an array of text parts) as one string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or an array", param="messages")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in MEDIA_PARTS:
            if not isinstance(part.get(kind), dict):
                raise ApiError(400, f"{where}.content: a {kind} part needs an {kind} "
                                    "object", param="messages")
            # Well formed, but this model reads no media: llama-server's 500 and words.
            raise ApiError(500, NO_MEDIA.replace("image", MEDIA_PARTS[kind], 1))
        if kind not in ("text", "input_text", "output_text") or not isinstance(
                part.get("text"), str):
            raise ApiError(400, f"{where}.content: unsupported content part "
                                f"{kind!r}; text parts only", param="messages")
        parts.append(part["text"])
    return "\n\n".join(parts)        # as llama.cpp joins a message's text parts


def _tool_calls_of(calls, where):
    """An assistant message's tool_calls, with arguments as objects where they parse
    (templates write them with tojson)."""
    if not isinstance(calls, list):
        raise ApiError(400, f"{where}.tool_calls must be an array", param="messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"{where}.tool_calls[{j}] must have a function with a name",
                           param="messages")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                parsed = json.loads(args) if args.strip() else {}
                if isinstance(parsed, dict):
                    args = parsed
            except ValueError:
                pass
        elif not isinstance(args, dict):
            raise ApiError(400, f"{where}.tool_calls[{j}].function.arguments must be a "
                                "JSON string", param="messages")
        out.append({"id": str(call.get("id") or ""), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})
    return out


def clean_messages(messages, allow_empty=False):
    """OpenAI messages checked and normalised for the template."""
    if not isinstance(messages, list) or (not messages and not allow_empty):
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    clean = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", param="messages")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"{where}.role must be system, user, assistant or tool",
                           param="messages")
        if role != "assistant" and "content" not in m:
            raise ApiError(400, f"{where} has no 'content'", param="messages")
        msg = {"role": role, "content": _text_of(m.get("content"), where)}
        if role == "assistant":
            if m.get("tool_calls"):
                msg["tool_calls"] = _tool_calls_of(m["tool_calls"], where)
            if isinstance(m.get("reasoning_content"), str) and m["reasoning_content"]:
                msg["reasoning_content"] = m["reasoning_content"]
        if role == "tool":
            msg["tool_call_id"] = str(m.get("tool_call_id") or "")
            if isinstance(m.get("name"), str):
                msg["name"] = m["name"]
        clean.append(msg)
    return clean


def clean_tools(tools):
    """OpenAI tools: [{"type": "function", "function": {name, description, parameters}}]."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                or not fn["name"]:
            raise ApiError(400, f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                                "{\"name\": ..., \"parameters\": {...}}}", param="tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object",
                           param="tools")
        out.append({"type": "function", "function": dict(fn)})
    return out


def tool_choice_of(body, tools):
    """("auto" | "none" | "required", the tools a call may use)."""
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        return "auto", tools
    if choice in ("none", "required"):
        return choice, tools
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        named = [t for t in tools if t["function"]["name"] == name]
        if not named:
            raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools",
                           param="tool_choice")
        return "required", named
    raise ApiError(400, "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                        "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                   param="tool_choice")


# ---------------------------------------------------------------- the template

class TemplateCaps:
    """What a chat template does with tools, probed once by rendering samples."""

    def __init__(self, fmt):
        source = getattr(fmt, "source", "") or ""
        self.source = source
        self.tools = "tools" in source
        self.tool_calls = self.tool_responses = False
        self.object_arguments = True
        if not source:
            return
        # Nine letters and digits: Mistral's templates refuse any other call id.
        call = {"id": "probe1234", "type": "function",
                "function": {"name": "probe_fn_7d1f", "arguments": {"probe": 1}}}
        probe = [{"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "probe1234", "name": "probe_fn_7d1f",
                  "content": "probe result 7d1f"}]
        self.object_arguments = True
        context = {"functions": "[]", "datetime": ""}    # FireFunction reads both unguarded
        try:
            text = fmt.render(probe, False, context)
        except Exception:
            text = ""
        if "probe_fn_7d1f" not in text:
            # Some templates (Functionary v3.2) concatenate the arguments: a JSON string.
            call["function"]["arguments"] = '{"probe": 1}'
            try:
                text = fmt.render(probe, False, context)
                self.object_arguments = "probe_fn_7d1f" not in text
            except Exception:
                return
        self.tool_calls = "probe_fn_7d1f" in text
        self.tool_responses = "probe result 7d1f" in text


def _caps(app):
    caps = getattr(app, "_template_caps", None)
    if caps is None or caps[0] is not app.chat_format:
        caps = (app.chat_format, TemplateCaps(app.chat_format))
        app._template_caps = caps
    return caps[1]


def _polyfill(messages, caps, fmt, tools, tool_choice, parallel):
    """Messages a tool-unaware template can render: tools in the system message, tool
    calls as the JSON the generic format answers in, tool results as user turns."""
    out = [dict(m) for m in messages]
    if tools and tool_choice != "none" and not caps.tools and fmt != "content":
        prompt = (tc.generic_system_prompt(tools, parallel) if fmt == "generic"
                  else tc.tools_system_prompt(fmt, tools))
        if out and out[0]["role"] == "system":
            out[0]["content"] = (out[0]["content"] + "\n\n" + prompt).lstrip()
        else:
            out.insert(0, {"role": "system", "content": prompt})
    for m in out:
        if m.get("tool_calls") and caps.tool_calls and not caps.object_arguments:
            m["tool_calls"] = [dict(c, function=dict(c["function"], arguments=json.dumps(
                c["function"]["arguments"], ensure_ascii=False)
                if not isinstance(c["function"]["arguments"], str) else c["function"]["arguments"]))
                for c in m["tool_calls"]]
        if m.get("tool_calls") and not caps.tool_calls:
            calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"],
                      "id": c["id"]} for c in m.pop("tool_calls")]
            text = tc.calls_text(fmt if fmt != "content" else "generic", calls)
            m["content"] = (m["content"] + "\n" + text) if m["content"] else text
        if m["role"] == "tool" and not caps.tool_responses:
            m["role"] = "user"
            m["content"] = json.dumps({"tool_response": {
                "tool": m.pop("name", ""), "tool_call_id": m.pop("tool_call_id", ""),
                "content": m["content"]}}, ensure_ascii=False)
    return out


# ---------------------------------------------------------------- the request

REASONING_NAMES = {"none": "none", "deepseek": "deepseek", "auto": "deepseek",
                   "deepseek-legacy": "deepseek"}


class ChatRequest:
    """A chat request made ready: prompt tokens, constraint, and its reply's parser."""

    def __init__(self, app, body, allow_empty=False):
        from runtime.chat import Conversation
        engine = app.ready()
        if app.chat_format is None:
            raise ApiError(500, f"chat is unavailable: {app.chat_error}")
        tokenizer = engine.tokenizer
        self.tools = clean_tools(body.get("tools"))
        self.tool_choice, allowed = tool_choice_of(body, self.tools)
        self.parallel = params.field(body, "parallel_tool_calls", bool, False)
        messages = clean_messages(body.get("messages"), allow_empty)
        caps = _caps(app)
        source = caps.source
        use_tools = bool(self.tools) and self.tool_choice != "none"
        self.fmt = tc.detect_format(source) if use_tools else "content"
        if self.tool_choice == "required" and not self.tools:
            raise ApiError(400, "tool_choice is \"required\" but no tools were given",
                           param="tool_choice")
        if use_tools and (body.get("grammar") is not None
                          or body.get("response_format") not in (None, {"type": "text"})):
            raise ApiError(400, "tools cannot be combined with a grammar or a response_format",
                           param="tools")

        reasoning = params.field(body, "reasoning_format", str,
                                 getattr(app.args, "reasoning_format", None) or "auto")
        if reasoning not in REASONING_NAMES:
            raise ApiError(400, f"reasoning_format must be one of "
                                f"{', '.join(REASONING_NAMES)}", param="reasoning_format")
        reasoning = REASONING_NAMES[reasoning]
        if not tc.reasons(source):
            reasoning = "none"

        rendered = _polyfill(messages, caps, self.fmt, self.tools, self.tool_choice,
                             self.parallel)
        # Prefill / continue_final_message, chat_template_kwargs, enable_thinking and the
        # dates templates read, as llama-server renders them.
        prompt = params.ChatPrompt(app, body, rendered,
                                   self.tools if self.tools and caps.tools else None)
        builtin = tool_grammar.builtin_tools(self.fmt, source, self.tools) if use_tools else []
        if builtin:
            prompt.context["builtin_tools"] = builtin
        conversation = Conversation(app.chat_format, tokenizer)
        conversation.messages = rendered
        self.prompt_text = prompt.text(app.chat_format)
        self.prompt_tokens = conversation.text_tokens(self.prompt_text)
        forced_open = self.prompt_text.rstrip().endswith(tc.THINK_OPEN)
        # Without tools the reply is still read in the family's format where plain
        # replies carry its markers (Functionary v3.2's `all\n`, Command R7B's blocks).
        self.reply_fmt = tc.reply_format(source, use_tools)
        self.parser = tc.OutputParser(self.reply_fmt, reasoning, forced_open,
                                      self.tools if use_tools else (), calls=use_tools)
        self._thinking = ("forced" if forced_open else
                          "maybe" if tc.template_thinks(source) else None)

        self._tokenizer = tokenizer
        self._body = body
        self._default_grammar = app.default_grammar
        self._tool_schema = None        # generic: the whole reply is {response | tool_call(s)}
        self._tool_grammar = None       # the other families: the call part's grammar
        if use_tools:
            try:
                if self.fmt == "generic":
                    self._tool_schema = tc.generic_schema(
                        allowed, self.parallel, allow_content=self.tool_choice == "auto")
                else:
                    self._tool_grammar = tool_grammar.call_grammar(
                        self.fmt, allowed, self.parallel, tokenizer, builtin)
                self.constraint = self.make_constraint()    # compiled once: errors now
            except ValueError as e:
                from runtime import constraint as engine
                status = 413 if engine.is_limit_error(e) else 400
                raise ApiError(status, f"tool parameters schema: {e}", param="tools") from None
        else:
            self.constraint = self.make_constraint()
        self.shown_tokens = set()
        for marker in tc.markers(self.reply_fmt):
            ids = tokenizer.encode(marker, add_special=False, parse_special=True)
            if len(ids) == 1 and tokenizer.is_control(ids[0]):
                self.shown_tokens.add(ids[0])

    def make_constraint(self):
        """A fresh constraint for one generation (constraints hold state), or None."""
        from runtime import constraint as engine
        if self._tool_schema is not None:
            return engine.from_schema(self._tokenizer, self._tool_schema)
        if self._tool_grammar is not None:
            text, triggers = self._tool_grammar
            if self.tool_choice == "required":
                return engine.from_grammar(self._tokenizer, text)
            return tool_grammar.LazyConstraint(self._tokenizer, text, triggers, self._thinking)
        return params.constraint(self._tokenizer, self._body, self._default_grammar)

    def stream(self):
        return tc.StreamParser(self.parser)


def message_json(message):
    """An OpenAI assistant message from a parsed reply."""
    out = {"role": "assistant",
           "content": message.content if message.content or not message.tool_calls else None}
    if message.reasoning_content:
        out["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        out["tool_calls"] = [{"type": "function", "id": c.id,
                              "function": {"name": c.name, "arguments": c.arguments}}
                             for c in message.tool_calls]
    return out


def delta_json(delta):
    """An OpenAI stream delta from one StreamParser delta."""
    if "tool_call" in delta:
        d = delta["tool_call"]
        call = {"index": d["index"]}
        if "id" in d:
            call.update(id=d["id"], type="function")
        fn = {}
        if "name" in d:
            fn["name"] = d["name"]
        fn["arguments"] = d.get("arguments", "")
        call["function"] = fn
        return {"tool_calls": [call]}
    return dict(delta)

