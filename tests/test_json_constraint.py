"""The JSON prefix automaton behind response_format, without a model."""

import json

import pytest

from runtime.json_constraint import JsonAcceptor, JsonConstraint, SchemaError, validate

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


def accepts(schema, text):
    """Whether `text` is a complete value (and every prefix of it a live one)."""
    a = JsonAcceptor(schema)
    data = text.encode()
    for i in range(len(data)):
        if not a.feed(data[:i]):
            return False
    a.advance(data)
    return bool(a.states) and a.can_end


@pytest.mark.parametrize("schema,text,ok", [
    (None, '{"a": [1, 2.5e3, "x\\u00e9", true, null], "b": {"c": -0.5}}', True),
    (None, '{"a": 01}', False),
    (None, '[1]', False),                       # json_object: the top level is an object
    (None, '{"a": "tab\there"}', False),        # control characters must be escaped
    (None, '{"é": "ü"}', True),
    (PERSON, '{"name": "Bob", "age": 42}', True),
    (PERSON, '{"age": 42, "name": "Bob"}', False),   # the schema's order
    (PERSON, '{"name": "Robert", "age": 4}', False),  # maxLength
    (PERSON, '{"name": "Bob", "age": 4.5}', False),
    (PERSON, '{"name": "Bob"}', False),
    ({"properties": {"k": {"enum": ["red", 1, 12]}}}, '{"k": 12}', True),
    ({"properties": {"k": {"enum": ["red", 1, 12]}}}, '{"k": 13}', False),
    ({"properties": {"k": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}, '{"k":null}', True),
    ({"properties": {"k": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}}},
     '{"k": [true, false, true]}', False),
    ({"$defs": {"n": {"type": "integer"}}, "properties": {"x": {"$ref": "#/$defs/n"}}},
     '{"x": -3}', True),
    ({"type": "integer"}, "42", True),
    ({"type": "object", "additionalProperties": False}, '{"a": 1}', False),
])
def test_acceptor(schema, text, ok):
    assert accepts(schema, text) == ok


def test_nothing_after_the_value():
    a = JsonAcceptor(None)
    a.advance(b'{"a": 1}')
    assert a.must_end
    assert not a.feed(b" ")


def test_whitespace_is_bounded():
    a = JsonAcceptor(None)
    assert a.feed(b"{" + b" " * 8)
    assert not a.feed(b"{" + b" " * 9)


def test_bad_schemas():
    for schema in ({"type": "martian"}, {"$ref": "#/nowhere"}, {"$ref": "http://x"}, 5):
        with pytest.raises(SchemaError):
            JsonAcceptor(schema)


class FakeTokenizer:
    """Single characters and a few words as tokens; id 0 ends generation."""

    def __init__(self):
        self.pieces = [b""] + [bytes([c]) for c in b'{}[]":, abcdefghijklmnopqrstuvwxyz0123456789'] + [
            b'{"', b'":', b'hello', b'"}', b" \n"]
        self.eog_ids = {0}

    def is_control(self, token):
        return token == 0

    def token_to_piece(self, token, special=True):
        return self.pieces[token]


def test_constraint_keeps_sampling_valid():
    from runtime.sampling import Sampler, SamplingParams
    tok = FakeTokenizer()
    for seed in range(20):
        c = JsonConstraint(tok, PERSON)
        sampler = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                                         seed=seed))
        out = b""
        for _ in range(300):
            logits = [0.0] * len(tok.pieces)
            t = c.sample(sampler, logits, [])
            if t in tok.eog_ids:
                break
            out += tok.token_to_piece(t)
            if c.advance(t):
                break
        value = json.loads(out)
        assert validate(value, PERSON) == []


def test_validate():
    assert validate({"name": "Bo", "age": 3}, PERSON) == []
    errors = validate({"name": 1}, PERSON)
    assert any("age" in e for e in errors) and any("name" in e for e in errors)
