"""Tools, Anthropic's Messages API and OpenAI's Responses API end to end: the real
server on SmolLM2 (its own template, which knows no tools: the generic JSON format),
driven by the official `openai` and `anthropic` clients; and the same model under
Qwen 2.5's template, whose <tool_call> format is forced when a call is required."""

import json
import os

import pytest

from runtime.json_schema import validate
from tests.models import SHARED, smollm2
from tests.server_process import ServerProcess

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
BOOK = {"type": "function", "function": {
    "name": "book_table", "description": "Book a table at a restaurant",
    "parameters": {"type": "object", "properties": {
        "people": {"type": "integer"}, "outside": {"type": "boolean"},
        "names": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
        "required": ["people", "outside", "names"]}}}
TOOLS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, BOOK)}
QWEN25 = os.path.join(SHARED, "testdata", "templates", "Qwen-Qwen2.5-7B-Instruct.jinja")


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(smollm2(), "-c", "2048", "-np", "2")
    yield srv
    assert srv.stop() == 0, "".join(srv.log)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0,
                               timeout=300)


def assert_valid_call(call, allowed=TOOLS):
    assert call.type == "function" and call.id
    assert call.function.name in allowed
    args = json.loads(call.function.arguments)
    assert validate(args, allowed[call.function.name]) == [], args


def test_two_step_tool_conversation(client):
    """The model calls the tool, gets the result, and answers in words."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER],
                                           tool_choice="required", max_tokens=80,
                                           temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert_valid_call(call)
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": "Sunny, 25 degrees celsius"})
    second = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER],
                                            tool_choice="none", max_tokens=40, temperature=0)
    answer = second.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content.strip()


def test_required_call_always_parses_and_validates(client):
    """At a high temperature, many seeds, a choice of two tools or one named: every
    reply is a call whose arguments validate against that tool's parameters."""
    prompts = ["Book a table for four people outside, names Ann and Bo.",
               "Is it cold in Oslo?", "hello", "Write a poem about the sea."]
    for seed in range(4):
        named = seed == 3
        response = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": prompts[seed % len(prompts)]}],
            tools=[WEATHER, BOOK], max_tokens=120, temperature=1.5, seed=seed,
            tool_choice={"type": "function", "function": {"name": "book_table"}}
            if named else "required")
        calls = response.choices[0].message.tool_calls
        assert calls and len(calls) == 1, response
        assert_valid_call(calls[0], {"book_table": TOOLS["book_table"]} if named else TOOLS)


def test_streamed_call_matches_unstreamed(client):
    kwargs = dict(model="m", messages=[{"role": "user", "content": "Weather in Rome?"}],
                  tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.tool_calls[0]
    name, arguments, ids, finish = "", "", set(), None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:       # the usage chunk llama-server sends last
            continue
        choice = chunk.choices[0]
        assert not choice.delta.content
        for call in choice.delta.tool_calls or []:
            assert call.index == 0
            ids.add(call.id) if call.id else None
            name += call.function.name or ""
            arguments += call.function.arguments or ""
        finish = choice.finish_reason or finish
    assert (name, arguments) == (whole.function.name, whole.function.arguments)
    assert len(ids) == 1 and finish == "tool_calls"


def test_tool_requests_checked(server):
    messages = [{"role": "user", "content": "hi"}]
    status, body = server.post("/v1/chat/completions", {
        "messages": messages, "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "nope"}}})
    assert status == 400 and "nope" in body["error"]["message"]
    status, body = server.post("/v1/chat/completions", {
        "messages": messages, "tools": [{"type": "function", "function": {}}]})
    assert status == 400 and body["error"]["param"] == "tools"
    status, body = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert status == 500 and "image input is not supported" in body["error"]["message"]


# ---------------------------------------------------------------- Anthropic

def test_anthropic_plain_and_streamed(claude):
    message = claude.messages.create(model="m", max_tokens=16, system="Answer briefly.",
                                     messages=[{"role": "user", "content": "Say hello"}])
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16

    kinds = []
    with claude.messages.stream(model="m", max_tokens=12, extra_body={"temperature": 0},
                                messages=[{"role": "user", "content": "Count to five"}]) as s:
        for event in s:
            kinds.append(event.type)
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert final.content[0].text and final.usage.output_tokens > 0
    counted = claude.messages.count_tokens(
        model="m", messages=[{"role": "user", "content": "Count to five"}])
    assert counted.input_tokens > 3


def test_anthropic_stop_sequences(claude):
    message = claude.messages.create(model="m", max_tokens=60, extra_body={"temperature": 0},
                                     stop_sequences=["\n", "."],
                                     messages=[{"role": "user", "content": "Tell me a story"}])
    if message.stop_reason == "stop_sequence":
        assert message.stop_sequence in ("\n", ".")
        assert message.stop_sequence not in message.content[0].text
    else:
        assert message.stop_reason in ("end_turn", "max_tokens")


def test_anthropic_tool_round_trip(claude):
    tools = [{"name": "get_weather", "description": "Get the current weather in a city",
              "input_schema": WEATHER["function"]["parameters"]}]
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = claude.messages.create(model="m", max_tokens=80, tools=tools, extra_body={"temperature": 0},
                                   tool_choice={"type": "any"}, messages=[question])
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.id
    assert validate(use.input, WEATHER["function"]["parameters"]) == []
    with claude.messages.stream(model="m", max_tokens=80, tools=tools, extra_body={"temperature": 0},
                                tool_choice={"type": "any"}, messages=[question]) as s:
        streamed = s.get_final_message()
    assert [b.input for b in streamed.content if b.type == "tool_use"] == [use.input]
    second = claude.messages.create(
        model="m", max_tokens=30, tools=tools, tool_choice={"type": "none"},
        extra_body={"temperature": 0},
        messages=[question, {"role": "assistant", "content": first.content},
                  {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                "content": "Sunny, 25 degrees"}]}])
    assert second.content[0].type == "text" and second.content[0].text
    assert second.stop_reason in ("end_turn", "max_tokens")
    # The call and its result reach the prompt.
    asked = claude.messages.count_tokens(model="m", messages=[question]).input_tokens
    answered = claude.messages.count_tokens(model="m", messages=[
        question, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                      "content": "Sunny, 25 degrees"}]}]).input_tokens
    assert answered > asked + 10


# ---------------------------------------------------------------- Responses

def test_responses(client):
    response = client.responses.create(model="m", instructions="Answer briefly.",
                                       input="What is the best book?", max_output_tokens=10)
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    assert response.output_text and response.usage.output_tokens <= 10
    text, kinds = "", []
    for event in client.responses.create(
            model="m", max_output_tokens=10, stream=True,
            input=[{"role": "user", "content": "What is the best book?"}]):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            assert event.response.output_text == text
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed" and text


# ---------------------------------------------------------------- a <tool_call> family

@pytest.fixture(scope="module")
def qwen_template_server():
    if not os.path.exists(QWEN25):
        pytest.skip(f"{QWEN25} is not here")
    srv = ServerProcess(smollm2(), "-c", "2048", "--chat-template", QWEN25)
    yield srv
    assert srv.stop() == 0, "".join(srv.log)


def test_hermes_format_required_call(qwen_template_server):
    """Under Qwen 2.5's template the forced call is written as <tool_call>{...}</tool_call>,
    which the Hermes parser reads back; streamed and not."""
    client = openai.OpenAI(base_url=qwen_template_server.url + "/v1", api_key="none",
                           max_retries=0, timeout=300)
    kwargs = dict(model="m", messages=[{"role": "user", "content": "Weather in Paris?"}],
                  tools=[WEATHER], tool_choice="required", max_tokens=80, temperature=0)
    message = client.chat.completions.create(**kwargs).choices[0].message
    assert message.content is None and len(message.tool_calls) == 1
    assert_valid_call(message.tool_calls[0])
    arguments = "".join(c.function.arguments or "" for chunk in
                        client.chat.completions.create(stream=True, **kwargs)
                        if chunk.choices      # not the closing usage chunk
                        for c in chunk.choices[0].delta.tool_calls or [])
    assert arguments == message.tool_calls[0].function.arguments


def test_hermes_auto_call_is_held_to_the_schema(qwen_template_server):
    """tool_choice auto under Qwen 2.5's template: free text until the model writes
    <tool_call> (three earlier calls in the conversation teach it to), then the rest is
    held to the call's schema, so every call it starts parses and validates."""
    client = openai.OpenAI(base_url=qwen_template_server.url + "/v1", api_key="none",
                           max_retries=0, timeout=300)
    messages = []
    for i, (n, names) in enumerate([(2, ["Ann", "Bob"]), (4, ["Cy"]), (3, ["Di", "Ed"])]):
        args = json.dumps({"people": n, "outside": False, "names": names})
        messages += [{"role": "user", "content": f"Book a table for {n}."},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"id": f"c{i}", "type": "function",
                          "function": {"name": "book_table", "arguments": args}}]},
                     {"role": "tool", "tool_call_id": f"c{i}", "content": "booked"},
                     {"role": "assistant", "content": "Done."}]
    messages.append({"role": "user", "content": "Book a table for 5."})
    calls = 0
    for seed in (1, 2, 3, 4):
        reply = client.chat.completions.create(
            model="m", messages=messages, tools=[WEATHER, BOOK], tool_choice="auto",
            max_tokens=200, temperature=1.3, seed=seed)
        choice = reply.choices[0]
        if choice.finish_reason == "length":
            continue
        for call in choice.message.tool_calls or []:
            assert_valid_call(call)
            calls += 1
    assert calls >= 2


# ---------------------------------------------------------------- families without tools

@pytest.mark.parametrize("template_name,reply", [
    ("meetkai-functionary-medium-v3.2.jinja", "all\nHello there"),
    ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
     "<|START_RESPONSE|>Hello there<|END_RESPONSE|>"),
])
def test_plain_reply_of_a_wrapping_family(template_name, reply):
    """A request with no tools under a template whose plain replies carry markers
    (Functionary v3.2's `all\\n` recipient, Command R7B's response block): the reply is
    read in the family's format, as llama-server reads it, so the content is the words
    alone, streamed and not. A grammar makes the model write exactly `reply`."""
    from tests import llama_cpp_sdist
    path = os.path.join(llama_cpp_sdist.require("models/templates"), template_name)
    srv = ServerProcess(smollm2(), "-c", "1024", "--chat-template-file", path)
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0,
                               timeout=300)
        kwargs = dict(model="m", messages=[{"role": "user", "content": "Say hello."}],
                      max_tokens=40, temperature=0,
                      extra_body={"grammar": "root ::= " + json.dumps(reply)})
        message = client.chat.completions.create(**kwargs).choices[0].message
        assert message.content == "Hello there" and not message.tool_calls
        streamed = "".join(chunk.choices[0].delta.content or ""
                           for chunk in client.chat.completions.create(stream=True, **kwargs)
                           if chunk.choices)
        assert streamed == "Hello there"
    finally:
        assert srv.stop() == 0, "".join(srv.log)
