"""llama.cpp's built-in chat formats, by the names its `--chat-template NAME` takes.

llama.cpp writes these formats out in C++ (src/llama-chat.cpp) for models whose GGUF
carries no usable Jinja template; `chatml` is what it falls back to when a model has
none at all. Each function here produces the same text as llama.cpp's for the same
messages (tests/test_chat_builtin.py holds llama.cpp's output for every name).

Messages are {"role", "content"} dicts; roles are passed through as llama.cpp does
("system", "user", "assistant", and whatever else a caller sends).
"""

from runtime.errors import UserError

# C's isspace() in the "C" locale: what llama.cpp's trim() strips.
_C_SPACE = " \t\n\v\f\r"


def _trim(text):
    return text.strip(_C_SPACE)


def _chatml(msgs, gen):
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    return out + ("<|im_start|>assistant\n" if gen else "")


def _mistral_v7(space):
    def fmt(msgs, gen):
        out = ""
        for m in msgs:
            if m["role"] == "system":
                out += f"[SYSTEM_PROMPT]{space}{m['content']}[/SYSTEM_PROMPT]"
            elif m["role"] == "user":
                out += f"[INST]{space}{m['content']}[/INST]"
            else:
                out += f"{space}{m['content']}</s>"
        return out
    return fmt


def _mistral_v1_v3(leading, trailing, trim_assistant):
    def fmt(msgs, gen):
        out, inside = "", False
        for m in msgs:
            if not inside:
                out += f"{leading}[INST]{trailing}"
                inside = True
            if m["role"] == "system":
                out += m["content"] + "\n\n"
            elif m["role"] == "user":
                out += f"{m['content']}{leading}[/INST]"
            else:
                content = _trim(m["content"]) if trim_assistant else m["content"]
                out += f"{trailing}{content}</s>"
                inside = False
        return out
    return fmt


def _llama2(system, bos_inside, strip):
    def fmt(msgs, gen):
        out, inside = "[INST] ", True
        for m in msgs:
            content = _trim(m["content"]) if strip else m["content"]
            if not inside:
                inside = True
                out += "<s>[INST] " if bos_inside else "[INST] "
            if m["role"] == "system":
                out += f"<<SYS>>\n{content}\n<</SYS>>\n\n" if system else content + "\n"
            elif m["role"] == "user":
                out += content + " [/INST]"
            else:
                out += content + "</s>"
                inside = False
        return out
    return fmt


def _turns(head, tail, generation, content=lambda m: m["content"]):
    """Formats that wrap every message as head(role) + content + tail."""
    def fmt(msgs, gen):
        out = "".join(head(m["role"]) + content(m) + tail for m in msgs)
        return out + (generation if gen else "")
    return fmt


def _monarch(msgs, gen):
    out = "".join(("" if i == 0 else "<s>") + f"{m['role']}\n{m['content']}</s>\n"
                  for i, m in enumerate(msgs))
    return out + ("<s>assistant\n" if gen else "")


def _gemma(msgs, gen):
    out, system = "", ""
    for m in msgs:
        if m["role"] == "system":
            system += _trim(m["content"])
            continue
        role = "model" if m["role"] == "assistant" else m["role"]
        out += f"<start_of_turn>{role}\n"
        if system and role != "model":
            out += system + "\n\n"
            system = ""
        out += _trim(m["content"]) + "<end_of_turn>\n"
    return out + ("<start_of_turn>model\n" if gen else "")


def _orion(msgs, gen):
    out, system = "", ""
    for m in msgs:
        if m["role"] == "system":
            system += m["content"]
        elif m["role"] == "user":
            out += "Human: "
            if system:
                out += system + "\n\n"
                system = ""
            out += m["content"] + "\n\nAssistant: </s>"
        else:
            out += m["content"] + "</s>"
    return out


def _openchat(msgs, gen):
    out = ""
    for m in msgs:
        if m["role"] == "system":
            out += m["content"] + "<|end_of_turn|>"
        else:
            role = m["role"][:1].upper() + m["role"][1:]
            out += f"GPT4 Correct {role}: {m['content']}<|end_of_turn|>"
    return out + ("GPT4 Correct Assistant:" if gen else "")


def _vicuna(orca):
    def fmt(msgs, gen):
        out = ""
        for m in msgs:
            if m["role"] == "system":
                out += f"SYSTEM: {m['content']}\n" if orca else m["content"] + "\n\n"
            elif m["role"] == "user":
                out += f"USER: {m['content']}\n"
            elif m["role"] == "assistant":
                out += f"ASSISTANT: {m['content']}</s>\n"
        return out + ("ASSISTANT:" if gen else "")
    return fmt


def _by_role(parts, generation):
    """Formats that write system/user/assistant (and tool) each their own way and drop
    other roles: parts maps role -> (prefix, suffix, trim the content)."""
    def fmt(msgs, gen):
        out = ""
        for m in msgs:
            if m["role"] in parts:
                prefix, suffix, trim = parts[m["role"]]
                out += prefix + (_trim(m["content"]) if trim else m["content"]) + suffix
        return out + (generation if gen else "")
    return fmt


def _minicpm(msgs, gen):
    out = ""
    for m in msgs:
        out += f"<用户>{_trim(m['content'])}<AI>" if m["role"] == "user" else _trim(m["content"])
    return out


def _rwkv_world(msgs, gen):
    out = ""
    for i, m in enumerate(msgs):
        if m["role"] == "system":
            out += f"System: {_trim(m['content'])}\n\n"
        elif m["role"] == "user":
            out += f"User: {_trim(m['content'])}\n\n"
            if i == len(msgs) - 1:
                out += "Assistant:"
        elif m["role"] == "assistant":
            out += f"Assistant: {_trim(m['content'])}\n\n"
    return out


def _granite3(msgs, gen):
    out = ""
    for m in msgs:
        out += f"<|start_of_role|>{m['role']}<|end_of_role|>"
        if m["role"] == "assistant_tool_call":
            out += "<|tool_call|>"
        out += m["content"] + "<|end_of_text|>\n"
    return out + ("<|start_of_role|>assistant<|end_of_role|>" if gen else "")


def _granite4(msgs, gen):
    out = ""
    for m in msgs:
        if m["role"] == "assistant_tool_call":
            out += "<|start_of_role|>assistant<|end_of_role|><|tool_call|>"
        else:
            out += f"<|start_of_role|>{m['role']}<|end_of_role|>"
        out += m["content"] + "<|end_of_text|>\n"
    return out + ("<|start_of_role|>assistant<|end_of_role|>" if gen else "")


def _gigachat(msgs, gen):
    has_system = bool(msgs) and msgs[0]["role"] == "system"
    out = f"<s>{msgs[0]['content']}<|message_sep|>" if has_system else "<s>"
    for m in msgs[1 if has_system else 0:]:
        if m["role"] == "user":
            out += (f"user<|role_sep|>{m['content']}<|message_sep|>"
                    "available functions<|role_sep|>[]<|message_sep|>")
        elif m["role"] == "assistant":
            out += f"assistant<|role_sep|>{m['content']}<|message_sep|>"
    return out + ("assistant<|role_sep|>" if gen else "")


def _yandex(msgs, gen):
    out = ""
    for m in msgs:
        if m["role"] == "user":
            out += f" Пользователь: {m['content']}\n\n"
        elif m["role"] == "assistant":
            out += f" Ассистент: {m['content']}\n\n"
    return out + (" Ассистент:[SEP]" if gen else "")


def _bailing_role(role):
    return "HUMAN" if role == "user" else role.upper()


def _bailing(think):
    def fmt(msgs, gen):
        out = "".join(f"<role>{_bailing_role(m['role'])}</role>{m['content']}" for m in msgs)
        if gen:
            out += "<role>ASSISTANT</role>" + ("<think>" if think else "")
        return out
    return fmt


def _bailing2(msgs, gen):
    out = "" if msgs and msgs[0]["role"] == "system" else \
        "<role>SYSTEM</role>detailed thinking off<|role_end|>"
    out += "".join(f"<role>{_bailing_role(m['role'])}</role>{m['content']}<|role_end|>"
                   for m in msgs)
    return out + ("<role>ASSISTANT</role>" if gen else "")


def _smolvlm(msgs, gen):
    out = "<|im_start|>"
    for m in msgs:
        if m["role"] == "system":
            out += m["content"] + "\n\n"
        elif m["role"] == "user":
            out += f"User: {m['content']}<end_of_utterance>\n"
        else:
            out += f"Assistant: {m['content']}<end_of_utterance>\n"
    return out + ("Assistant:" if gen else "")


def _hunyuan_moe(msgs, gen):
    out = ""
    for m in msgs:
        if m["role"] == "system":
            out += f"<|startoftext|>{m['content']}<|extra_4|>"
        elif m["role"] == "assistant":
            out += m["content"] + "<|eos|>"
        else:
            out += f"<|startoftext|>{m['content']}<|extra_0|>"
    return out


def _gpt_oss(msgs, gen):
    out = "".join(f"<|start|>{m['role']}<|message|>{m['content']}"
                  + ("<|return|>" if m["role"] == "assistant" else "<|end|>") for m in msgs)
    return out + ("<|start|>assistant" if gen else "")


def _hunyuan_dense(msgs, gen):
    out = ""
    for i, m in enumerate(msgs):
        if i == 0 and m["role"] == "system":
            out += m["content"] + "<｜hy_place▁holder▁no▁3｜>"
        if m["role"] == "assistant":
            out += f"<｜hy_Assistant｜>{m['content']}<｜hy_place▁holder▁no▁2｜>"
        elif m["role"] == "user":
            out += f"<｜hy_User｜>{m['content']}<｜hy_Assistant｜>"
    return out


def _hunyuan_vl(msgs, gen):
    out = "<｜hy_begin▁of▁sentence｜>"
    for i, m in enumerate(msgs):
        if i == 0 and m["role"] == "system":
            out += m["content"] + "<｜hy_place▁holder▁no▁3｜>"
            continue
        if m["role"] == "user":
            out += m["content"] + "<｜hy_User｜>"
        elif m["role"] == "assistant":
            out += m["content"] + "<｜hy_Assistant｜>"
    return out


_KIMI_HEADS = {"system": "<|im_system|>system<|im_middle|>",
               "user": "<|im_user|>user<|im_middle|>",
               "assistant": "<|im_assistant|>assistant<|im_middle|>",
               "tool": "<|im_system|>tool<|im_middle|>"}


def _kimi_k2(msgs, gen):
    out = "".join(_KIMI_HEADS.get(m["role"], "") + m["content"] + "<|im_end|>" for m in msgs)
    return out + ("<|im_assistant|>assistant<|im_middle|>" if gen else "")


def _seed_oss(msgs, gen):
    out = "".join(f"<seed:bos>{m['role']}\n"
                  + (_trim(m["content"]) if m["role"] == "assistant" else m["content"])
                  + "<seed:eos>" for m in msgs)
    return out + ("<seed:bos>assistant\n" if gen else "")


_PANGU_ROLES = {"system": "系统", "user": "用户", "assistant": "助手", "tool": "工具",
                "function": "方法"}


def _pangu_embedded(msgs, gen):
    out = ""
    for i, m in enumerate(msgs):
        if i == 0 and m["role"] != "system":
            out += "[unused9]系统：[unused10]"
        if m["role"] in _PANGU_ROLES:
            out += f"[unused9]{_PANGU_ROLES[m['role']]}：{m['content']}[unused10]"
    return out + ("[unused9]助手：" if gen else "")


def _plain(msgs, gen):
    return "".join(m["content"] for m in msgs)


FORMATS = {
    "chatml": _chatml,
    "llama2": _llama2(system=False, bos_inside=False, strip=False),
    "llama2-sys": _llama2(system=True, bos_inside=False, strip=False),
    "llama2-sys-bos": _llama2(system=True, bos_inside=True, strip=False),
    "llama2-sys-strip": _llama2(system=True, bos_inside=False, strip=True),
    "mistral-v1": _mistral_v1_v3(" ", " ", trim_assistant=False),
    "mistral-v3": _mistral_v1_v3("", " ", trim_assistant=True),
    "mistral-v3-tekken": _mistral_v1_v3("", "", trim_assistant=False),
    "mistral-v7": _mistral_v7(" "),
    "mistral-v7-tekken": _mistral_v7(""),
    "phi3": _turns(lambda r: f"<|{r}|>\n", "<|end|>\n", "<|assistant|>\n"),
    "phi4": _turns(lambda r: f"<|im_start|>{r}<|im_sep|>", "<|im_end|>",
                   "<|im_start|>assistant<|im_sep|>"),
    "falcon3": _turns(lambda r: f"<|{r}|>\n", "\n", "<|assistant|>\n"),
    "zephyr": _turns(lambda r: f"<|{r}|>\n", "<|endoftext|>\n", "<|assistant|>\n"),
    "monarch": _monarch,
    "gemma": _gemma,
    "orion": _orion,
    "openchat": _openchat,
    "vicuna": _vicuna(orca=False),
    "vicuna-orca": _vicuna(orca=True),
    "deepseek": _by_role({"system": ("", "", False),
                          "user": ("### Instruction:\n", "\n", False),
                          "assistant": ("### Response:\n", "\n<|EOT|>\n", False)},
                         "### Response:\n"),
    "deepseek2": _by_role({"system": ("", "\n\n", False), "user": ("User: ", "\n\n", False),
                           "assistant": ("Assistant: ", "<｜end▁of▁sentence｜>", False)},
                          "Assistant:"),
    "deepseek3": _by_role({"system": ("", "\n\n", False), "user": ("<｜User｜>", "", False),
                           "assistant": ("<｜Assistant｜>", "<｜end▁of▁sentence｜>", False)},
                          "<｜Assistant｜>"),
    "deepseek-ocr": _plain,
    "command-r": _by_role(
        {"system": ("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>", "<|END_OF_TURN_TOKEN|>", True),
         "user": ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>", "<|END_OF_TURN_TOKEN|>", True),
         "assistant": ("<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
                       True)},
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"),
    "llama3": _turns(lambda r: f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>",
                     "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     lambda m: _trim(m["content"])),
    "chatglm3": lambda msgs, gen: "[gMASK]sop" + _turns(
        lambda r: f"<|{r}|>\n ", "", "<|assistant|>")(msgs, gen),
    "chatglm4": lambda msgs, gen: "[gMASK]<sop>" + _turns(
        lambda r: f"<|{r}|>\n", "", "<|assistant|>\n")(msgs, gen),
    "glmedge": _turns(lambda r: f"<|{r}|>\n", "", "<|assistant|>"),
    "minicpm": _minicpm,
    "exaone3": _by_role({"system": ("[|system|]", "[|endofturn|]\n", True),
                         "user": ("[|user|]", "\n", True),
                         "assistant": ("[|assistant|]", "[|endofturn|]\n", True)},
                        "[|assistant|]"),
    "exaone4": _by_role({"system": ("[|system|]", "[|endofturn|]\n", True),
                         "user": ("[|user|]", "\n", True),
                         "assistant": ("[|assistant|]", "[|endofturn|]\n", True),
                         "tool": ("[|tool|]", "[|endofturn|]\n", True)},
                        "[|assistant|]"),
    "exaone-moe": _by_role({r: (f"<|{r}|>\n", "<|endofturn|>\n", True)
                            for r in ("system", "user", "assistant", "tool")},
                           "<|assistant|>\n"),
    "rwkv-world": _rwkv_world,
    "granite": _granite3,
    "granite-4.0": _granite4,
    "granite-4.1": _granite4,
    "gigachat": _gigachat,
    "megrez": _turns(lambda r: f"<|role_start|>{r}<|role_end|>", "<|turn_end|>",
                     "<|role_start|>assistant<|role_end|>"),
    "yandex": _yandex,
    "bailing": _bailing(think=False),
    "bailing-think": _bailing(think=True),
    "bailing2": _bailing2,
    "llama4": _turns(lambda r: f"<|header_start|>{r}<|header_end|>\n\n", "<|eot|>",
                     "<|header_start|>assistant<|header_end|>\n\n",
                     lambda m: _trim(m["content"])),
    "smolvlm": _smolvlm,
    "hunyuan-moe": _hunyuan_moe,
    "gpt-oss": _gpt_oss,
    "hunyuan-dense": _hunyuan_dense,
    "hunyuan-vl": _hunyuan_vl,
    "kimi-k2": _kimi_k2,
    "seed_oss": _seed_oss,
    "grok-2": _by_role({"system": ("System: ", "<|separator|>\n\n", True),
                        "user": ("Human: ", "<|separator|>\n\n", True),
                        "assistant": ("Assistant: ", "<|separator|>\n\n", False)},
                       "Assistant:"),
    "pangu-embedded": _pangu_embedded,
    "solar-open": _turns(lambda r: f"<|begin|>{r}<|content|>", "<|end|>",
                         "<|begin|>assistant"),
}

# What llama.cpp uses for a model without a chat template.
FALLBACK = "chatml"


class BuiltinFormat:
    """A built-in format by name; renders like ChatTemplate.render."""

    def __init__(self, name):
        if name not in FORMATS:
            raise UserError(f"unknown chat template {name!r}; built-in ones are: "
                            f"{', '.join(sorted(FORMATS))} (or pass a Jinja file)")
        self.name = name
        self.source = ""   # no Jinja text: a format written in code
        self._format = FORMATS[name]

    def render(self, messages, add_generation_prompt=True, extra=None):
        # `extra` (Jinja variables such as tools) has no place in a format written in
        # code: tools reach these formats through the system message instead.
        return self._format(messages, add_generation_prompt)
