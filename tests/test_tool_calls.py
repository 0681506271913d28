"""Tool-call and reasoning parsers (runtime/tool_calls.py) on fixed model outputs: the
texts of llama.cpp's tests/test-chat.cpp for each family, whole and streamed in every
split, and the real chat templates recognised and rendered with tools."""

import json
import os
import random

import pytest

from runtime import tool_calls as tc
from tests import llama_cpp_sdist


ASSIST = "Hello, world!\nWhat's up?"
THOUGHTS = "I'm\nthinking"
CALL = ("special_function", '{"arg1": 1}')
DS_CALL = ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n"
           "```json\n{\"arg1\": 1}```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
SPECIAL_TOOL = {"type": "function", "function": {
    "name": "special_function", "description": "I'm special",
    "parameters": {"type": "object", "properties": {"arg1": {"type": "integer"}},
                   "required": ["arg1"]}}}
STRING_TOOL = {"type": "function", "function": {
    "name": "echo", "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                   "required": ["text"]}}}

# (format, options, model output, content, reasoning, [(name, arguments, id or None)])
CASES = [
    ("hermes", {}, '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}'
                   '</tool_call>', "", "", [CALL]),
    ("hermes", {}, ASSIST + '<tool_call>\n{"name": "special_function", "arguments": '
                            '{"arg1": 1}}</tool_call>', ASSIST, "", [CALL]),
    ("hermes", {}, '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n'
                   '</tool_call>', "", "", [CALL]),
    ("hermes", {}, ASSIST + '\n<tool_call>\n{"name": "special_function", "arguments": '
                            '{"arg1": 1}}\n</tool_call>', ASSIST, "", [CALL]),
    ("hermes", {}, '<tool_call>\n{"name": "special_function", "arguments": {"arg1": 1}}\n'
                   '</tool_call>\n<tool_call>\n{"name": "special_function_with_opt", '
                   '"arguments": {"arg1": 1, "arg2": 2}}\n</tool_call>', "", "",
     [CALL, ("special_function_with_opt", '{"arg1": 1, "arg2": 2}')]),
    ("hermes", {"thinking_forced_open": True},
     "I'm\nthinking\n</think>\n\n<tool_call>\n{\"name\": \"special_function\", "
     "\"arguments\": {\"arg1\": 1}}\n</tool_call>", "", THOUGHTS, [CALL]),
    ("hermes", {}, "<think>I'm\nthinking</think>" + ASSIST, ASSIST, THOUGHTS, []),
    ("hermes", {}, ASSIST, ASSIST, "", []),
    ("llama3", {}, '{"name": "special_function", "parameters": {"arg1": 1}}', "", "", [CALL]),
    ("llama3", {}, "<|python_tag|>python.call(code=\"print('hey')\")", "", "",
     [("python", '{"code": "print(\'hey\')"}')]),
    ("llama3", {}, "<|python_tag|>code_interpreter.call(code=\"print('hey')\")", "", "",
     [("code_interpreter", '{"code": "print(\'hey\')"}')]),
    ("llama3", {}, ASSIST, ASSIST, "", []),
    ("mistral_nemo", {}, '[TOOL_CALLS][{"name": "special_function", "arguments": {"arg1": 1}, '
                         '"id": "123456789"}]', "", "", [CALL + ("123456789",)]),
    ("mistral_nemo", {}, ASSIST, ASSIST, "", []),
    ("generic", {}, '{"tool_call": {"name": "special_function", "arguments": {"arg1": 1}}}',
     "", "", [CALL]),
    ("generic", {}, '{"tool_calls": [{"name": "special_function", "arguments": {"arg1": 1}}, '
                    '{"name": "f2", "arguments": {}}]}', "", "", [CALL, ("f2", "{}")]),
    ("generic", {}, json.dumps({"response": ASSIST}), ASSIST, "", []),
    # DeepSeek R1 (llama-cpp-deepseek-r1.jinja forces <think> open; the Qwen distill does not)
    ("deepseek_r1", {"thinking_forced_open": True},
     "</think>" + DS_CALL, "", "", [CALL]),
    ("deepseek_r1", {}, DS_CALL, "", "", [CALL]),
    ("deepseek_r1", {"thinking_forced_open": True}, "I'm\nthinking</think>" + ASSIST, ASSIST,
     THOUGHTS, []),
    ("deepseek_r1", {}, ASSIST + "\n" + DS_CALL.replace("<｜tool▁calls▁begin｜>",
                                                       "<｜tool calls begin｜>"),
     ASSIST, "", [CALL]),
    ("functionary_v3_1", {}, '<function=special_function>{"arg1": 1}</function>', "", "",
     [CALL]),
    ("functionary_v3_1", {}, ASSIST, ASSIST, "", []),
    ("functionary_v3_2", {}, "all\n" + ASSIST, ASSIST, "", []),
    ("functionary_v3_2", {}, 'special_function\n{"arg1": 1}', "", "", [CALL]),
    ("firefunction_v2", {}, ' functools[{"name": "special_function", "arguments": {"arg1": 1}}]',
     "", "", [CALL]),
    ("firefunction_v2", {}, ASSIST, ASSIST, "", []),
    ("command_r7b", {}, "<|START_RESPONSE|>" + ASSIST + "<|END_RESPONSE|>", ASSIST, "", []),
    ("command_r7b", {}, "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n"
                        '    {"tool_call_id": "0", "tool_name": "special_function", '
                        '"parameters": {"arg1": 1}}\n]<|END_ACTION|>', "", THOUGHTS,
     [CALL + ("0",)]),
    ("granite", {}, '<|tool_call|>[{"name": "special_function", "arguments": {"arg1": 1}}]',
     "", "", [CALL]),
    ("granite", {}, "<think>I'm\nthinking</think>" + ASSIST, ASSIST, THOUGHTS, []),
    ("qwen3_coder", {"tools": [SPECIAL_TOOL]}, ASSIST, ASSIST, "", []),
    ("qwen3_coder", {"tools": [SPECIAL_TOOL]}, "<tool_call>\n<function=special_function>\n"
     "<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>", "", "", [CALL]),
    ("qwen3_coder", {"tools": [SPECIAL_TOOL]}, "<function=special_function>\n"
     "<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>", "", "", [CALL]),
    ("qwen3_coder", {"tools": [SPECIAL_TOOL]}, "Let me call it.\n<function=special_function>\n"
     "<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>", "Let me call it.\n", "",
     [CALL]),
    ("qwen3_coder", {"tools": [SPECIAL_TOOL, STRING_TOOL]}, "<tool_call>\n<function=special_function>\n"
     "<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n"
     "<function=echo>\n<parameter=text>\n1\n</parameter>\n</function>\n</tool_call>", "", "",
     [CALL, ("echo", '{"text": "1"}')]),
    # GPT-OSS (harmony channels)
    ("gpt_oss", {}, "<|channel|>final<|message|>" + ASSIST, ASSIST, "", []),
    ("gpt_oss", {}, "<|channel|>commentary<|message|>" + ASSIST, ASSIST, "", []),
    ("gpt_oss", {}, "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant"
                    "<|channel|>final<|message|>" + ASSIST, ASSIST, THOUGHTS, []),
    ("gpt_oss", {"reasoning_format": "none"}, "<|channel|>analysis<|message|>I'm\nthinking"
     "<|end|><|start|>assistant<|channel|>final<|message|>" + ASSIST,
     "<|channel|>analysis<|message|>I'm\nthinking<|end|>" + ASSIST, "", []),
    ("gpt_oss", {}, ' to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
     "", "", [CALL]),
    ("gpt_oss", {}, '<|channel|>analysis to=functions.special_function<|message|>{"arg1": 1}',
     "", "", [CALL]),
    ("gpt_oss", {}, " to=functions.special_function<|channel|>analysis <|constrain|>json"
                    '<|message|>{"arg1": 1}', "", "", [CALL]),
    ("gpt_oss", {}, '<|channel|>commentary to=functions.special_function<|message|>{"arg1": 1}',
     "", "", [CALL]),
    ("gpt_oss", {}, "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant "
                    'to=functions.special_function<|channel|>analysis<|message|>{"arg1": 1}',
     "", THOUGHTS, [CALL]),
    ("gpt_oss", {}, "<|channel|>analysis<|message|>I will execute python to say hello<|end|>"
                    "<|start|>assistant to=container.exec<|channel|>commentary<|message|>"
                    "python3 -c 'print(\"hello\")'", "", "I will execute python to say hello", []),
    ("gpt_oss", {}, "<|channel|>analysis<|message|>I will execute python to say hello<|end|>"
                    "<|start|>assistant<|channel|>commentary to=python <|constrain|>code"
                    '<|message|>print("hello")', "", "I will execute python to say hello", []),
    ("gpt_oss", {}, "<|channel|>commentary to=assistant<|channel|>analysis<|message|>I'm\n"
                    "thinking<|end|><|start|>assistant<|channel|>final<|message|>" + ASSIST,
     ASSIST, THOUGHTS, []),
    ("gpt_oss", {}, "<|channel|>analysis<|message|>I'm\nthinking<|end|><|start|>assistant"
                    "<|channel|>commentary to=assistant<|channel|>final<|message|>" + ASSIST,
     ASSIST, THOUGHTS, []),
    # No tools offered (calls=False): the family's markers around plain replies are
    # still read, as llama-server reads them; nothing becomes a call.
    ("functionary_v3_2", {"calls": False}, "all\n" + ASSIST, ASSIST, "", []),
    ("functionary_v3_2", {"calls": False}, "all\n" + ASSIST + '>>>special_function\n{"arg1": 1}',
     ASSIST + '>>>special_function\n{"arg1": 1}', "", []),
    ("functionary_v3_2", {"calls": False}, ASSIST, ASSIST, "", []),
    ("command_r7b", {"calls": False}, "<|START_RESPONSE|>" + ASSIST + "<|END_RESPONSE|>",
     ASSIST, "", []),
    ("command_r7b", {"calls": False}, "<|START_THINKING|>I'm\nthinking<|END_THINKING|>"
     "<|START_RESPONSE|>" + ASSIST + "<|END_RESPONSE|>", ASSIST, THOUGHTS, []),
    ("gpt_oss", {"calls": False}, "<|channel|>analysis<|message|>I'm\nthinking<|end|>"
     "<|start|>assistant<|channel|>final<|message|>" + ASSIST, ASSIST, THOUGHTS, []),
    ("gpt_oss", {"calls": False}, '<|channel|>commentary to=functions.special_function'
     '<|message|>{"arg1": 1}', '{"arg1": 1}', "", []),
    ("content", {"thinking_forced_open": True}, "</think>" + ASSIST, ASSIST, "", []),
    ("content", {"thinking_forced_open": True}, "I'm\nthinking</think>" + ASSIST, ASSIST,
     THOUGHTS, []),
    ("content", {"reasoning_format": "none"}, "<think>I'm\nthinking</think>" + ASSIST,
     "<think>I'm\nthinking</think>" + ASSIST, "", []),
]


def check(message, content, reasoning, calls):
    assert message.content == content
    assert message.reasoning_content == reasoning
    assert [(c.name, c.arguments) for c in message.tool_calls] == [c[:2] for c in calls]
    for call, want in zip(message.tool_calls, calls):
        if len(want) > 2:
            assert call.id == want[2]
        else:
            assert call.id      # one is made up when the model gives none


@pytest.mark.parametrize("fmt,options,text,content,reasoning,calls", CASES)
def test_whole_reply(fmt, options, text, content, reasoning, calls):
    check(tc.parse_reply(text, fmt, **options), content, reasoning, calls)


def replay(fmt, options, chunks):
    """Stream the chunks; the message rebuilt from the deltas."""
    stream = tc.StreamParser(tc.OutputParser(fmt, **options))
    deltas = []
    for chunk in chunks:
        deltas += stream.feed(chunk)
    deltas += stream.finish()
    msg = tc.Message()
    for d in deltas:
        msg.content += d.get("content", "")
        msg.reasoning_content += d.get("reasoning_content", "")
        if "tool_call" in d:
            call = d["tool_call"]
            if "name" in call:
                assert call["index"] == len(msg.tool_calls) and call["id"]
                msg.tool_calls.append(tc.ToolCall(call["name"], "", call["id"]))
            msg.tool_calls[call["index"]].arguments += call["arguments"]
    return msg, deltas, stream.message


@pytest.mark.parametrize("fmt,options,text,content,reasoning,calls", CASES)
def test_streamed_every_split(fmt, options, text, content, reasoning, calls):
    """Two chunks split at every position, then one character at a time, then random
    chunkings: the deltas add up to the same message, and no content delta carries a
    piece of a marker."""
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    rng = random.Random(len(text))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), min(5, len(text) - 1)))
        splits.append([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])])
    for chunks in splits:
        rebuilt, deltas, final = replay(fmt, options, chunks)
        check(rebuilt, content, reasoning, calls)
        assert [c.id for c in rebuilt.tool_calls] == [c.id for c in final.tool_calls]
        if options.get("reasoning_format") != "none":
            for d in deltas:
                for marker in tc.markers(fmt):
                    if marker not in content:     # (a marker the reply keeps as words)
                        assert marker not in d.get("content", ""), (chunks, d)


def test_partial_arguments_stream_as_written():
    parser = tc.OutputParser("hermes")
    msg = parser.parse('<tool_call>\n{"name": "special_function", "arguments": {"arg',
                       partial=True)
    assert [(c.name, c.arguments) for c in msg.tool_calls] == [("special_function", '{"arg')]
    # The name is not announced before its closing quote.
    assert parser.parse('<tool_call>\n{"name": "special_fun', partial=True).tool_calls == []
    # A marker cut short is held back, not shown as content.
    assert parser.parse("Hello <tool_c", partial=True).content == "Hello"


def test_json_that_is_not_a_call_stays_content():
    text = '{"answer": 42}'
    assert tc.parse_reply(text, "llama3").content == text
    assert tc.parse_reply(text, "generic").content == text


def test_scan_json_prefixes():
    value, end, complete, scan = tc.scan_json('{"a": [1, "x\\u00e9"], "b": {"c": tru')
    assert not complete and value == {"a": [1, "xé"], "b": {}}
    assert scan.raw(("b",)) == '{"c": tru'
    value, end, complete, _ = tc.scan_json('{"a": 1} tail')
    assert complete and value == {"a": 1} and end == 8
    with pytest.raises(ValueError):
        tc.scan_json('{"a" 1}')


def template(name):
    """A chat template of llama.cpp's models/templates (tests/llama_cpp_sdist.py)."""
    path = os.path.join(llama_cpp_sdist.require("models/templates"), name)
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name,fmt,thinks", [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "hermes", False),
    ("Qwen-Qwen3-0.6B.jinja", "hermes", True),
    ("meta-llama-Llama-3.1-8B-Instruct.jinja", "llama3", False),
    ("meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3", False),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "mistral_nemo", False),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", "deepseek_r1", True),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "deepseek_r1", True),
    ("llama-cpp-deepseek-r1.jinja", "deepseek_r1", True),
    ("meetkai-functionary-medium-v3.1.jinja", "functionary_v3_1", False),
    ("meetkai-functionary-medium-v3.2.jinja", "functionary_v3_2", False),
    ("fireworks-ai-llama-3-firefunction-v2.jinja", "firefunction_v2", False),
    ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "command_r7b", False),
    ("ibm-granite-granite-3.3-2B-Instruct.jinja", "granite", True),
    ("ibm-granite-granite-4.0.jinja", "hermes", False),
    ("Qwen3-Coder.jinja", "qwen3_coder", False),
    ("openai-gpt-oss-120b.jinja", "gpt_oss", False),
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja", "hermes", False),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", "llama3", False),
    ("google-gemma-2-2b-it.jinja", "generic", False),
    ("microsoft-Phi-3.5-mini-instruct.jinja", "generic", False),
])
def test_family_from_template(name, fmt, thinks):
    source = template(name)
    assert tc.detect_format(source) == fmt
    assert tc.template_thinks(source) == thinks
    # without tools, only the families that wrap plain replies keep their parser
    assert tc.reply_format(source, use_tools=True) == fmt
    assert tc.reply_format(source, use_tools=False) == (
        fmt if fmt in ("functionary_v3_2", "command_r7b", "gpt_oss") else "content")
    assert tc.reasons(source) == (thinks or fmt in ("command_r7b", "gpt_oss"))


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
                                  "meta-llama-Llama-3.1-8B-Instruct.jinja",
                                  "mistralai-Mistral-Nemo-Instruct-2407.jinja",
                                  "llama-cpp-deepseek-r1.jinja",
                                  "meetkai-functionary-medium-v3.1.jinja",
                                  "meetkai-functionary-medium-v3.2.jinja",
                                  "fireworks-ai-llama-3-firefunction-v2.jinja",
                                  "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
                                  "ibm-granite-granite-3.3-2B-Instruct.jinja",
                                  "Qwen3-Coder.jinja", "openai-gpt-oss-120b.jinja"])
def test_templates_render_tools_calls_and_results(name):
    """The tools, an earlier call and its result all reach the prompt text, through the
    server's preparation: arguments as a JSON string for templates that concatenate
    them, calls written in the family's own text for templates that drop them."""
    from runtime.chat import ChatTemplate
    from runtime.server.chat import TemplateCaps, _polyfill
    tmpl = ChatTemplate(template(name), bos_token="<s>", eos_token="</s>")
    caps = TemplateCaps(tmpl)
    fmt = tc.detect_format(tmpl.source)
    assert caps.tool_calls == (name != "ibm-granite-granite-3.3-2B-Instruct.jinja")
    assert caps.object_arguments == (name != "meetkai-functionary-medium-v3.2.jinja")
    call_id = tc.new_call_id(fmt)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": call_id, "name": "get_weather",
         "content": "Sunny, 25 C"},
    ]
    messages = _polyfill(messages, caps, fmt, [WEATHER], "auto", False)
    text = tmpl.render(messages, True, {"tools": [WEATHER],
                                        "functions": json.dumps([WEATHER], indent=2),
                                        "datetime": "Dec 01 2026"})
    assert "Get the weather" in text
    call = text.split("Sunny, 25 C")[0].split("Get the weather")[-1]
    assert "Paris" in call and "get_weather" in call
    if not caps.tool_calls:
        assert tc.calls_text(fmt, [{"name": "get_weather", "arguments": {"city": "Paris"},
                                    "id": call_id}]) in call
    assert "Sunny, 25 C" in text


def test_generic_schema_shapes():
    generic = tc.generic_schema([WEATHER], True, allow_content=True)
    assert len(generic["anyOf"]) == 2
    assert generic["anyOf"][0]["properties"]["tool_calls"]["items"]["properties"]["name"] == \
        {"const": "get_weather"}
    assert tc.generic_schema([WEATHER], False, allow_content=False)["required"] == ["tool_call"]


@pytest.mark.parametrize("name,calls", [
    ("Qwen-Qwen2.5-7B-Instruct.jinja", True), ("meta-llama-Llama-3.1-8B-Instruct.jinja", True),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", True), ("google-gemma-2-2b-it.jinja", False)])
def test_template_caps(name, calls):
    """Which templates render tool calls and results themselves (the others get them
    written into the conversation as JSON)."""
    from runtime.chat import ChatTemplate
    from runtime.server.chat import TemplateCaps
    caps = TemplateCaps(ChatTemplate(template(name), bos_token="<s>", eos_token="</s>"))
    assert caps.tool_calls == calls and caps.tool_responses == calls
    assert caps.tools == calls
