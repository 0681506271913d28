"""llama.cpp's output for each of its built-in chat formats, the reference for
tests/test_chat_builtin.py. Regenerate with llama.cpp's libllama.so:

    python -m tests.chat_builtin_vectors path/to/libllama.so

It calls llama_chat_apply_template(NAME, messages, add_assistant) for every name
llama_chat_builtin_templates() lists, on the conversations below, and writes
tests/chat_builtin_llama_cpp.json.
"""

import ctypes
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_builtin_llama_cpp.json")

CONVERSATIONS = [
    # llama.cpp's own test conversation (tests/test-chat-template.cpp)
    [{"role": "system", "content": "You are a helpful assistant"},
     {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi there"},
     {"role": "user", "content": "Who are you"},
     {"role": "assistant", "content": "   I am an assistant   "},
     {"role": "user", "content": "Another question"}],
    [{"role": "user", "content": "  Bonjour, ça va?\n"}],
    [{"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "\tLet me look.\n"},
     {"role": "tool", "content": "{\"temp\": 21}"},
     {"role": "assistant", "content": "21 °C, 晴れ."},
     {"role": "user", "content": "Thanks"}],
    [{"role": "system", "content": " Be terse. "},
     {"role": "system", "content": "Really."},
     {"role": "user", "content": "Hi"}],
]


class _Message(ctypes.Structure):
    _fields_ = [("role", ctypes.c_char_p), ("content", ctypes.c_char_p)]


def main(lib_path):
    lib = ctypes.CDLL(lib_path)
    lib.llama_chat_builtin_templates.restype = ctypes.c_int32
    lib.llama_chat_builtin_templates.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]
    lib.llama_chat_apply_template.restype = ctypes.c_int32
    lib.llama_chat_apply_template.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Message),
                                              ctypes.c_size_t, ctypes.c_bool,
                                              ctypes.c_char_p, ctypes.c_int32]
    n = lib.llama_chat_builtin_templates(None, 0)
    names_buf = (ctypes.c_char_p * n)()
    lib.llama_chat_builtin_templates(names_buf, n)
    names = sorted(x.decode() for x in names_buf)
    outputs = {}
    for name in names:
        outputs[name] = []
        for conv in CONVERSATIONS:
            msgs = (_Message * len(conv))(*[_Message(m["role"].encode(), m["content"].encode())
                                            for m in conv])
            pair = []
            for add_ass in (True, False):
                size = lib.llama_chat_apply_template(name.encode(), msgs, len(conv), add_ass,
                                                     None, 0)
                buf = ctypes.create_string_buffer(size + 1)
                lib.llama_chat_apply_template(name.encode(), msgs, len(conv), add_ass, buf,
                                              size + 1)
                pair.append(buf.raw[:size].decode("utf-8"))
            outputs[name].append(pair)
    with open(OUT + ".tmp", "w", encoding="utf-8") as f:
        json.dump({"conversations": CONVERSATIONS, "outputs": outputs}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    os.replace(OUT + ".tmp", OUT)
    print(f"wrote {OUT}: {len(names)} formats")


if __name__ == "__main__":
    main(sys.argv[1])
