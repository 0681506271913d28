"""Chat templates render conversations to the exact text each model family documents.

The expectations are literals, checked by hand against the model cards / official
prompt-format docs, not produced by running the renderer.
"""

import datetime
import os

import pytest

from runtime.chat import ChatTemplate, Conversation, load_chat_format
from runtime.errors import UserError
from tests.plain_format import PlainFormat

SHARED_TEMPLATES = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "testdata", "templates"))

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Name a color."},
]

FIXED_NOW = datetime.datetime(2025, 3, 7, 12, 0, 0)


def shared_template(name):
    path = os.path.join(SHARED_TEMPLATES, name)
    if not os.path.isdir(SHARED_TEMPLATES):
        pytest.skip(f"../shared/testdata/templates is absent ({SHARED_TEMPLATES}); "
                    "the real-template tests need the shared test data")
    with open(path, encoding="utf-8") as f:
        return f.read()


def render(name, bos="<s>", eos="</s>", messages=CONVERSATION):
    t = ChatTemplate(shared_template(name), bos_token=bos, eos_token=eos, now=lambda: FIXED_NOW)
    return t.render(messages, add_generation_prompt=True)


def test_smollm2_template_from_gguf():
    from runtime.gguf import GGUFFile
    from tests.models import smollm2
    fmt = load_chat_format(GGUFFile.open(smollm2()))
    assert isinstance(fmt, ChatTemplate)
    assert fmt.render(CONVERSATION) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nName a color.<|im_end|>\n"
        "<|im_start|>assistant\n")
    # Without a system message the template supplies its own default one.
    assert fmt.render(CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
        "Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")


def test_llama_3_1():
    assert render("meta-llama-Llama-3.1-8B-Instruct.jinja", bos="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama_3_2_uses_strftime_now():
    assert render("meta-llama-Llama-3.2-3B-Instruct.jinja", bos="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 07 Mar 2025\n\n"
        "You are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a color.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


CHATML = ("<|im_start|>system\nYou are terse.<|im_end|>\n"
          "<|im_start|>user\nHi!<|im_end|>\n"
          "<|im_start|>assistant\nHello.<|im_end|>\n"
          "<|im_start|>user\nName a color.<|im_end|>\n"
          "<|im_start|>assistant\n")


def test_qwen2_5():
    assert render("Qwen-Qwen2.5-7B-Instruct.jinja") == CHATML
    # No system message: Qwen's default one.
    assert render("Qwen-Qwen2.5-7B-Instruct.jinja", messages=CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3():
    assert render("Qwen-Qwen3-0.6B.jinja") == CHATML
    # Earlier assistant turns lose their reasoning; no default system message.
    thought = [{"role": "user", "content": "Hi!"},
               {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello."},
               {"role": "user", "content": "Bye."}]
    assert render("Qwen-Qwen3-0.6B.jinja", messages=thought) == (
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye.<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_gemma_2_folds_the_system_prompt_into_the_first_user_turn():
    # Gemma 2's template raise_exception()s on a system role; we fold the system text
    # into the first user turn, as Gemma 3's own template does.
    assert render("google-gemma-2-2b-it.jinja", bos="<bos>") == (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nName a color.<end_of_turn>\n"
        "<start_of_turn>model\n")


def test_gemma_2_rejects_non_alternating_roles_with_a_clear_error():
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(UserError, match="rejects this conversation: Conversation roles "
                                        "must alternate"):
        render("google-gemma-2-2b-it.jinja", messages=bad)


def test_mistral_nemo_puts_the_system_prompt_in_the_last_user_turn():
    assert render("mistralai-Mistral-Nemo-Instruct-2407.jinja") == (
        "<s>[INST]Hi![/INST]Hello.</s>[INST]You are terse.\n\nName a color.[/INST]")


def test_phi_3_5():
    assert render("microsoft-Phi-3.5-mini-instruct.jinja", eos="<|endoftext|>") == (
        "<|system|>\nYou are terse.<|end|>\n"
        "<|user|>\nHi!<|end|>\n"
        "<|assistant|>\nHello.<|end|>\n"
        "<|user|>\nName a color.<|end|>\n"
        "<|assistant|>\n")


def test_deepseek_r1_distill():
    assert render("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                  bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>") == (
        "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi!<｜Assistant｜>Hello."
        "<｜end▁of▁sentence｜><｜User｜>Name a color.<｜Assistant｜><think>\n")


def test_smollm3_custom_instructions():
    assert render("HuggingFaceTB-SmolLM3-3B.jinja") == (
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /think\n\n## Custom Instructions\n\nYou are terse.\n\n<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nName a color.<|im_end|>\n"
        "<|im_start|>assistant\n")


def test_smollm3_no_think_in_the_system_prompt():
    messages = [{"role": "system", "content": "Be brief. /no_think"},
                {"role": "user", "content": "Hi!"}]
    assert render("HuggingFaceTB-SmolLM3-3B.jinja", messages=messages) == (
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\n"
        "Reasoning Mode: /no_think\n\n## Custom Instructions\n\nBe brief.\n\n<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n")


def test_template_errors_are_one_line_user_errors():
    with pytest.raises(UserError, match="syntax error at line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(UserError, match="chat template failed"):
        ChatTemplate("{{ messages[5]['content'] }}").render([])


def test_sandbox_blocks_python_internals():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(UserError):
        ChatTemplate(evil).render([])


def test_tojson_is_plain_json():
    t = ChatTemplate("{{ messages[0] | tojson }}")
    assert t.render([{"role": "user", "content": "<a & 'b'> é"}]) == \
        '{"role": "user", "content": "<a & \'b\'> é"}'


def test_generation_tag_is_transparent():
    t = ChatTemplate("{% for m in messages %}{% generation %}{{ m.content }}"
                     "{% endgeneration %}{% endfor %}")
    assert t.render([{"role": "assistant", "content": "x"}]) == "x"


class _Chars:
    """A tokenizer stand-in: one id per character."""
    bos_id = None

    def encode(self, text, add_special=True, parse_special=True):
        return [ord(c) for c in text]


def test_conversation_undo_clear_and_drop_oldest():
    conv = Conversation(PlainFormat(), _Chars(), system_prompt="S")
    for u, a in (("u1", "a1"), ("u2", "a2"), ("u3", "a3")):
        conv.messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    assert conv.undo()
    assert [m["content"] for m in conv.messages] == ["S", "u1", "a1", "u2", "a2"]
    assert conv.drop_oldest_turn()
    assert [m["content"] for m in conv.messages] == ["S", "u2", "a2"]
    conv.set_system("T")
    assert [m["content"] for m in conv.messages] == ["T", "u2", "a2"]
    conv.clear()
    assert conv.messages == [{"role": "system", "content": "T"}]
    assert not conv.undo() and not conv.drop_oldest_turn()


def test_conversation_load_rejects_bad_json():
    conv = Conversation(PlainFormat(), _Chars())
    with pytest.raises(UserError, match="message 0"):
        conv.load_json({"messages": [{"role": "robot", "content": "x"}]}, "f.json")
    with pytest.raises(UserError, match="holds no conversation"):
        conv.load_json({"x": 1}, "f.json")
