"""Anthropic's Messages API: POST /v1/messages and /v1/messages/count_tokens.

A request is turned into its OpenAI chat equivalent (system, text / tool_use /
tool_result / thinking blocks, tools with input_schema, tool_choice, stop_sequences)
the way llama-server does, runs through the same chat pipeline, and is answered in
Anthropic's shape: content blocks, stop_reason, usage; streamed as message_start,
content_block_start / _delta / _stop per block, message_delta and message_stop.
"""

import json
import uuid

from runtime.server import params
from runtime.server.chat import ChatRequest
from runtime.server.errors import ApiError
from runtime.server.replies import generate_reply, matched_stop

DEFAULT_MAX_TOKENS = 4096


def _image_part(block):
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        url = f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block):
    """A tool_result block as an OpenAI tool message."""
    content = block.get("content")
    if isinstance(content, list):
        parts = []
        for c in content:
            if isinstance(c, dict) and c.get("type") == "image":
                parts.append(_image_part(c))
            elif isinstance(c, dict) and c.get("type") == "text":
                parts.append({"type": "text", "text": str(c.get("text", ""))})
        if all(p["type"] == "text" for p in parts):
            content = "".join(p["text"] for p in parts)
        else:
            content = parts
    elif not isinstance(content, str):
        content = ""
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
            "content": content}


def _messages(body):
    """Anthropic system + messages as OpenAI messages."""
    out = []
    system = body.get("system")
    if isinstance(system, list):
        system = "".join(b.get("text", "") for b in system
                         if isinstance(b, dict) and b.get("type") == "text")
    if isinstance(system, str):
        out.append({"role": "system", "content": system})
    elif system is not None:
        raise ApiError(400, "'system' must be a string or an array of text blocks",
                       param="system")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ApiError(400, "'messages' is required (an array)", param="messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = msg.get("role")
        content = msg.get("content")
        if not isinstance(content, list):
            out.append({"role": role, "content": content})
            continue
        parts, calls, results, thinking = [], [], [], ""
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "thinking":
                thinking += str(block.get("thinking", ""))
            elif kind == "redacted_thinking":
                pass
            elif kind == "image":
                parts.append(_image_part(block))
            elif kind == "tool_use":
                calls.append({"id": str(block.get("id", "")), "type": "function",
                              "function": {"name": str(block.get("name", "")),
                                           "arguments": json.dumps(block.get("input") or {},
                                                                   ensure_ascii=False)}})
            elif kind == "tool_result":
                results.append(_tool_result(block))
            else:
                raise ApiError(400, f"messages[{i}]: unsupported content block type {kind!r}",
                               param="messages")
        if parts or calls or thinking:
            new = {"role": role, "content": parts if parts else ""}
            if calls:
                new["tool_calls"] = calls
            if thinking:
                new["reasoning_content"] = thinking
            out.append(new)
        out.extend(results)
    return out


def _tools(body):
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ApiError(400, "'tools' must be an array", param="tools")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ApiError(400, f"tools[{i}] must have a name and an input_schema", param="tools")
        out.append({"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""),
            "parameters": t.get("input_schema") or {"type": "object"}}})
    return out


def _tool_choice(body):
    choice = body.get("tool_choice")
    if choice is None:
        return None
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise ApiError(400, "'tool_choice' must be {\"type\": \"auto\" | \"any\" | \"none\"} or "
                        "{\"type\": \"tool\", \"name\": ...}", param="tool_choice")


def to_openai(body):
    """An Anthropic Messages request as an OpenAI chat request."""
    out = {"messages": _messages(body)}
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body)
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(body.get("tool_choice"), dict) and \
            body["tool_choice"].get("disable_parallel_tool_use") is False:
        out["parallel_tool_calls"] = True
    for key in ("temperature", "top_p", "top_k", "chat_template_kwargs", "reasoning_format"):
        if key in body:
            out[key] = body[key]
    return out


def count_tokens(app, http):
    """POST /v1/messages/count_tokens: the prompt's size, nothing generated."""
    body = http.read_json()
    request = ChatRequest(app, to_openai(body), allow_empty=True)
    http.send_json(200, {"input_tokens": len(request.prompt_tokens)})


def messages(app, http):
    """POST /v1/messages."""
    engine = app.ready()
    body = http.read_json()
    request = ChatRequest(app, to_openai(body), allow_empty=True)
    max_tokens = params.field(body, "max_tokens", int, DEFAULT_MAX_TOKENS, 1, 1 << 31)
    n_predict = params.budget(engine.n_ctx, {"max_tokens": max_tokens}, request.prompt_tokens,
                              ("max_tokens",), openai=False)
    sampling = params.sampling(app.defaults, body, openai=True)
    stops = params.stops(body, "stop_sequences")
    params.field(body, "stream", bool)
    ident = "msg_" + uuid.uuid4().hex[:24]
    model = params.field(body, "model", str) or app.model_name

    def stop_reason(session, message):
        if session.finish_reason != "stop":
            return "max_tokens", None
        if message.tool_calls:
            return "tool_use", None
        word = matched_stop(engine.tokenizer, session, stops)
        return ("stop_sequence", word) if word else ("end_turn", None)

    def usage(session):
        cached = session.timings.reused_tokens
        return {"cache_read_input_tokens": cached,
                "input_tokens": len(request.prompt_tokens) - cached,
                "output_tokens": len(session.generated)}

    if not body.get("stream"):
        session, message = generate_reply(app, http, request, sampling, n_predict, stops)
        reason, word = stop_reason(session, message)
        http.send_json(200, {"id": ident, "type": "message", "role": "assistant",
                             "content": content_blocks(message), "model": model,
                             "stop_reason": reason, "stop_sequence": word,
                             "usage": usage(session)})
        return

    http.start_events()
    send = _event_sender(http)
    send("message_start", {"message": {
        "id": ident, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None,
        "usage": {"cache_read_input_tokens": 0, "input_tokens": len(request.prompt_tokens),
                  "output_tokens": 0}}})
    blocks = BlockStream(send)
    session, message = generate_reply(app, http, request, sampling, n_predict, stops,
                                      blocks.feed)
    blocks.close()
    reason, word = stop_reason(session, message)
    send("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": word},
                           "usage": {"output_tokens": len(session.generated)}})
    send("message_stop", {})


def _event_sender(http):
    def send(kind, data):
        http.send_event(dict({"type": kind}, **data), event=kind)
    return send


def content_blocks(message):
    """A parsed reply as Anthropic content blocks: thinking, text, tool_use."""
    blocks = []
    if message.reasoning_content:
        blocks.append({"type": "thinking", "thinking": message.reasoning_content,
                       "signature": ""})
    if message.content or not message.tool_calls and not message.reasoning_content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.arguments)
        except ValueError:
            arguments = {}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                       "input": arguments if isinstance(arguments, dict) else {}})
    return blocks


class BlockStream:
    """Streamed deltas as Anthropic content blocks: each block is started, filled and
    stopped before the next one starts, numbered from 0."""

    def __init__(self, send):
        self.send = send
        self.index = -1
        self.open = None        # ("thinking" | "text" | "tool", call index)

    def _start(self, key, block):
        self._stop()
        self.index += 1
        self.open = key
        self.send("content_block_start", {"index": self.index, "content_block": block})

    def _stop(self):
        if self.open is None:
            return
        if self.open[0] == "thinking":
            self._delta({"type": "signature_delta", "signature": ""})
        self.send("content_block_stop", {"index": self.index})
        self.open = None

    def _delta(self, delta):
        self.send("content_block_delta", {"index": self.index, "delta": delta})

    def feed(self, deltas):
        for d in deltas:
            if "reasoning_content" in d:
                if self.open != ("thinking", None):
                    self._start(("thinking", None), {"type": "thinking", "thinking": ""})
                self._delta({"type": "thinking_delta", "thinking": d["reasoning_content"]})
            elif "content" in d:
                if self.open != ("text", None):
                    self._start(("text", None), {"type": "text", "text": ""})
                self._delta({"type": "text_delta", "text": d["content"]})
            else:
                call = d["tool_call"]
                if "name" in call:
                    self._start(("tool", call["index"]), {"type": "tool_use", "id": call["id"],
                                                          "name": call["name"], "input": {}})
                if call.get("arguments") and self.open == ("tool", call["index"]):
                    self._delta({"type": "input_json_delta",
                                 "partial_json": call["arguments"]})

    def close(self):
        if self.index < 0:      # an empty reply is still one (empty) text block
            self._start(("text", None), {"type": "text", "text": ""})
        self._stop()

