"""A chat format for tests of the conversation mechanics: the turns as plain text, so
that lengths in characters are easy to count."""


class PlainFormat:
    """No template: the conversation is plain text, each turn continuing the last."""

    def render(self, messages, add_generation_prompt=True):
        text = ""
        for m in messages:
            content = m["content"]
            if m["role"] == "system":
                text += content + ("\n\n" if content and not content.endswith("\n") else "")
            elif m["role"] == "user" and text and not text[-1].isspace():
                text += "\n" + content   # a new user line after the model's words
            else:
                text += content
        return text
