"""llama.cpp's built-in chat formats (runtime/chat_builtin.py) give llama.cpp's text.

tests/chat_builtin_llama_cpp.json holds what llama.cpp's llama_chat_apply_template
produced for every built-in name on four conversations (system prompts, whitespace to
trim or keep, a tool message, non-ASCII text), with and without the assistant's
opening; tests/chat_builtin_vectors.py wrote it.
"""

import json
import os

import pytest

from runtime.chat_builtin import FALLBACK, FORMATS, BuiltinFormat
from runtime.errors import UserError

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "chat_builtin_llama_cpp.json"), encoding="utf-8") as _f:
    LLAMA_CPP = json.load(_f)


def test_the_names_are_llama_cpps():
    assert sorted(FORMATS) == sorted(LLAMA_CPP["outputs"])
    assert FALLBACK == "chatml"


@pytest.mark.parametrize("name", sorted(LLAMA_CPP["outputs"]))
def test_format_gives_llama_cpps_text(name):
    fmt = BuiltinFormat(name)
    for conversation, (with_opening, without) in zip(LLAMA_CPP["conversations"],
                                                     LLAMA_CPP["outputs"][name]):
        assert fmt.render(conversation, add_generation_prompt=True) == with_opening
        assert fmt.render(conversation, add_generation_prompt=False) == without


def test_unknown_name_is_refused_with_the_list():
    with pytest.raises(UserError, match="chatml.*llama3"):
        BuiltinFormat("chatgpt")
