"""OpenAI's Responses API: POST /v1/responses.

`input` (text, or a list of message / function_call / function_call_output /
reasoning items) and `instructions` become a chat request as llama-server converts
them; the reply comes back as output items (reasoning, message, function_call), or
streamed as response.created, response.in_progress, response.output_item.added,
response.content_part.added, response.output_text.delta ... response.completed.
llama.cpp's telemetry rides along when asked: `return_progress` (prompt_progress)
and `timings_per_token` (timings on the deltas).
"""

import time
import uuid

from runtime.server import params
from runtime.server.api import timings
from runtime.server.chat import ChatRequest
from runtime.server.errors import ApiError
from runtime.server.replies import generate_reply


def _id(prefix):
    return prefix + uuid.uuid4().hex


def _parts(content, where):
    """Input content parts as chat content parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or an array", param="input")
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            out.append({"type": "image_url", "image_url": {"url": str(part.get("image_url"))}})
        elif kind == "refusal":
            out.append({"type": "text", "text": str(part.get("refusal", ""))})
        else:
            raise ApiError(400, f"{where}: unsupported content part {kind!r}", param="input")
    return out


def _messages(body):
    if "input" not in body:
        raise ApiError(400, "'input' is required", param="input")
    if body.get("previous_response_id"):
        raise ApiError(400, "'previous_response_id' is not supported; send the whole "
                            "conversation in 'input'", param="previous_response_id")
    out = []
    instructions = params.field(body, "instructions", str)
    if instructions is not None:
        out.append({"role": "system", "content": instructions})
    items = body["input"]
    if isinstance(items, str):
        return out + [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ApiError(400, "'input' must be a string or an array of items", param="input")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where} must be an object", param="input")
        kind = item.get("type", "message")
        last = out[-1] if out and out[-1]["role"] == "assistant" else None
        if kind == "message" and item.get("role") in ("user", "system", "developer",
                                                       "assistant"):
            content = _parts(item.get("content", ""), where)
            if item["role"] == "assistant" and last is not None and not last.get("tool_calls"):
                last["content"] = last["content"] + content
            else:
                out.append({"role": item["role"], "content": content})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id", "")), "type": "function",
                    "function": {"name": str(item.get("name", "")),
                                 "arguments": str(item.get("arguments", "{}"))}}
            if last is not None:
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": [], "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output", "")
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id", "")),
                        "content": output if isinstance(output, str)
                        else _parts(output, where)})
        elif kind == "reasoning":
            text = "".join(c.get("text", "") for c in item.get("content") or []
                           if isinstance(c, dict))
            if last is not None:
                last["reasoning_content"] = text
            else:
                out.append({"role": "assistant", "content": [], "reasoning_content": text})
        else:
            raise ApiError(400, f"{where}: cannot tell what kind of item this is "
                                f"(type {kind!r})", param="input")
    return out


def to_openai(body):
    """A Responses request as an OpenAI chat request."""
    out = {"messages": _messages(body)}
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ApiError(400, "'tools' must be an array", param="tools")
        functions = [{"type": "function", "function": {k: v for k, v in t.items()
                                                       if k != "type"}}
                     for t in tools if isinstance(t, dict) and t.get("type") == "function"]
        if functions:
            out["tools"] = functions
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        out["tool_choice"] = choice
    for key in ("temperature", "top_p", "top_k", "parallel_tool_calls", "chat_template_kwargs",
                "reasoning_format", "min_p", "seed"):
        if key in body:
            out[key] = body[key]
    return out


def output_items(message, ids):
    """A parsed reply as Responses output items."""
    items = []
    if message.reasoning_content:
        items.append({"id": ids["reasoning"], "type": "reasoning", "summary": [],
                      "content": [{"type": "reasoning_text",
                                   "text": message.reasoning_content}],
                      "encrypted_content": "", "status": "completed"})
    if message.content or not message.tool_calls and not message.reasoning_content:
        items.append(_message_item(ids["message"], message.content, "completed"))
    for call in message.tool_calls:
        items.append(_call_item(call.id, call.name, call.arguments, "completed"))
    return items


def _message_item(ident, text, status):
    content = [] if text is None else [_text_part(text)]
    return {"id": ident, "type": "message", "status": status, "role": "assistant",
            "content": content}


def _text_part(text):
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(call_id, name, arguments, status):
    return {"id": "fc_" + call_id, "type": "function_call", "status": status,
            "arguments": arguments, "call_id": "call_" + call_id, "name": name}


def responses(app, http):
    """POST /v1/responses."""
    engine = app.ready()
    body = http.read_json()
    request = ChatRequest(app, to_openai(body))
    limit = params.field(body, "max_output_tokens", int, None, 1, 1 << 31)
    n_predict = params.budget(engine.n_ctx, {} if limit is None else {"max_tokens": limit},
                              request.prompt_tokens, ("max_tokens",), openai=True)
    sampling = params.sampling(app.defaults, body, openai=True)
    stream = params.field(body, "stream", bool, False)
    want_timings = params.field(body, "timings_per_token", bool, False)
    want_progress = params.field(body, "return_progress", bool, False)
    model = params.field(body, "model", str) or app.model_name
    ids = {"response": _id("resp_"), "message": _id("msg_"), "reasoning": _id("rs_")}
    created = int(time.time())

    def response(status, output, session=None):
        obj = {"id": ids["response"], "object": "response", "created_at": created,
               "status": status, "model": model, "output": output}
        if session is not None:
            n_in, n_out = len(request.prompt_tokens), len(session.generated)
            obj["completed_at"] = int(time.time())
            obj["usage"] = {"input_tokens": n_in, "output_tokens": n_out,
                            "total_tokens": n_in + n_out,
                            "input_tokens_details": {
                                "cached_tokens": session.timings.reused_tokens},
                            "output_tokens_details": {"reasoning_tokens": 0}}
        return obj

    if not stream:
        session, message = generate_reply(app, http, request, sampling, n_predict, [])
        http.send_json(200, response("completed", output_items(message, ids), session))
        return

    http.start_events()
    events = EventStream(http, ids)
    events.send("response.created", {"response": response("in_progress", [])})
    events.send("response.in_progress", {"response": response("in_progress", [])})
    live = {}

    def on_session(session):
        live["session"] = session

    def on_deltas(deltas):
        session = live["session"]
        extra = {}
        if want_progress and not live.get("progress_sent"):
            live["progress_sent"] = True
            t = session.timings
            n = len(request.prompt_tokens)
            events.send("response.in_progress", {
                "response": response("in_progress", []),
                "prompt_progress": {"total": n, "cache": t.reused_tokens, "processed": n,
                                    "time_ms": round(t.prompt_seconds * 1000, 3)}})
            live["started"] = time.perf_counter()
        if want_timings:
            extra["timings"] = live_timings(session, live.setdefault(
                "started", time.perf_counter()))
        events.feed(deltas, extra)

    session, message = generate_reply(app, http, request, sampling, n_predict, [], on_deltas,
                                      on_session)
    events.close(message)
    done = {"response": response("completed", output_items(message, ids), session)}
    if want_timings or want_progress:
        done["timings"] = timings(session)
    events.send("response.completed", done)


def live_timings(session, started):
    """llama.cpp's timings while generating (the session's own are set at the end)."""
    t = session.timings
    n = len(session.generated)
    ms = (time.perf_counter() - started) * 1000
    pms = t.prompt_seconds * 1000
    return {"prompt_n": t.prompt_tokens, "prompt_ms": round(pms, 3),
            "prompt_per_token_ms": round(pms / t.prompt_tokens, 3) if t.prompt_tokens else 0,
            "prompt_per_second": round(t.prompt_per_second, 3),
            "predicted_n": n, "predicted_ms": round(ms, 3),
            "predicted_per_token_ms": round(ms / n, 3) if n else 0,
            "predicted_per_second": round(n * 1000 / ms, 3) if ms and n else 0.0,
            "cache_n": t.reused_tokens}


class EventStream:
    """Streamed deltas as Responses events: one output item per reasoning, message
    and function call, each opened when it starts and closed at the end."""

    def __init__(self, http, ids):
        self.http = http
        self.ids = ids
        self.seq = 0
        self.items = []         # [kind, item id, text so far, call]
        self.open_kinds = {}

    def send(self, kind, data):
        obj = {"type": kind, "sequence_number": self.seq}
        obj.update(data)
        self.seq += 1
        self.http.send_event(obj, event=kind)

    def _open(self, kind, item, key):
        self.items.append({"kind": kind, "item": item, "text": "", "key": key})
        self.send("response.output_item.added", {"output_index": len(self.items) - 1,
                                                 "item": item})
        return self.items[-1]

    def feed(self, deltas, extra):
        sent = []
        for d in deltas:
            if "reasoning_content" in d:
                entry = self._find("reasoning")
                if entry is None:
                    entry = self._open("reasoning", {
                        "id": self.ids["reasoning"], "type": "reasoning", "summary": [],
                        "content": [], "encrypted_content": "", "status": "in_progress"},
                        "reasoning")
                entry["text"] += d["reasoning_content"]
                sent.append(("response.reasoning_text.delta", {
                    "item_id": self.ids["reasoning"], "output_index": self._index(entry),
                    "content_index": 0, "delta": d["reasoning_content"]}))
            elif "content" in d:
                entry = self._find("message")
                if entry is None:
                    entry = self._open("message", _message_item(self.ids["message"], None,
                                                                "in_progress"), "message")
                    self.send("response.content_part.added", {
                        "item_id": self.ids["message"], "output_index": self._index(entry),
                        "content_index": 0, "part": _text_part("")})
                entry["text"] += d["content"]
                sent.append(("response.output_text.delta", {
                    "item_id": self.ids["message"], "output_index": self._index(entry),
                    "content_index": 0, "delta": d["content"], "logprobs": []}))
            else:
                call = d["tool_call"]
                key = ("call", call["index"])
                entry = self._find(key)
                if entry is None and "name" in call:
                    entry = self._open("call", _call_item(call["id"], call["name"], "",
                                                          "in_progress"), key)
                    entry["call"] = call
                if entry is not None and call.get("arguments"):
                    entry["text"] += call["arguments"]
                    sent.append(("response.function_call_arguments.delta", {
                        "item_id": entry["item"]["id"], "output_index": self._index(entry),
                        "delta": call["arguments"]}))
        for i, (kind, data) in enumerate(sent):
            if i == len(sent) - 1:
                data.update(extra)
            self.send(kind, data)

    def _find(self, key):
        for entry in self.items:
            if entry["key"] == key:
                return entry
        return None

    def _index(self, entry):
        return self.items.index(entry)

    def close(self, message):
        for i, entry in enumerate(self.items):
            if entry["kind"] == "reasoning":
                item = dict(entry["item"], status="completed",
                            content=[{"type": "reasoning_text", "text": entry["text"]}])
                self.send("response.reasoning_text.done", {
                    "item_id": item["id"], "output_index": i, "content_index": 0,
                    "text": entry["text"]})
            elif entry["kind"] == "message":
                item = _message_item(self.ids["message"], entry["text"], "completed")
                self.send("response.output_text.done", {
                    "item_id": item["id"], "output_index": i, "content_index": 0,
                    "text": entry["text"], "logprobs": []})
                self.send("response.content_part.done", {
                    "item_id": item["id"], "output_index": i, "content_index": 0,
                    "part": _text_part(entry["text"])})
            else:
                item = dict(entry["item"], status="completed", arguments=entry["text"])
                self.send("response.function_call_arguments.done", {
                    "item_id": item["id"], "output_index": i, "arguments": entry["text"]})
            self.send("response.output_item.done", {"output_index": i, "item": item})
