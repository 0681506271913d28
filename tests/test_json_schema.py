"""JSON schema to grammar (llama.cpp's json-schema-to-grammar shape), schema errors,
compile limits, and decoding that always yields valid instances."""

import json
import random
import time

import pytest

from runtime.constraint import from_schema, is_limit_error
from runtime.grammar import Automaton, Grammar, GrammarError
from runtime.json_schema import SchemaError, SchemaLimitError, int_range, to_grammar, validate
from runtime.sampling import Sampler, SamplingParams

PERSON = {"type": "object",
          "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"},
                         "email": {"type": "string", "format": "email"},
                         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
          "required": ["name", "age"]}


def accepts(schema, text):
    return Automaton(Grammar(to_grammar(schema))).matches(text.encode())


@pytest.mark.parametrize("schema,text,ok", [
    ({"type": "object"}, '{"a": [1, 2.5e3, "x\\u00e9", true, null], "b": {"c": -0.5}}', True),
    ({"type": "object"}, '{"a": 01}', False),
    ({"type": "object"}, '[1]', False),
    ({"type": "object"}, '{"a": "tab\there"}', False),
    ({"type": "object"}, '{"é": "ü"}', True),
    (PERSON, '{"name": "Bob", "age": 42}', True),
    (PERSON, '{"name":"Bob","age":42,"tags":["a","b"]}', True),
    (PERSON, '{"name": "Bob", "age": 42, "tags": ["a", "b", "c"]}', False),
    (PERSON, '{"age": 42, "name": "Bob"}', False),          # properties in the schema's order
    (PERSON, '{"name": "Robert", "age": 4}', False),        # maxLength
    (PERSON, '{"name": "Bob", "age": 4.5}', False),
    (PERSON, '{"name": "Bob"}', False),
    ({"properties": {"k": {"enum": ["red", 1, 12]}}}, '{"k": 12}', True),
    ({"properties": {"k": {"enum": ["red", 1, 12]}}}, '{"k": 13}', False),
    ({"properties": {"k": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}, '{"k":null}', True),
    ({"const": "42"}, '"42"', True),
    ({"items": [{"type": "integer"}]}, "[ -3000 ]", True),
    ({"items": [{"type": "integer"}]}, "[1, 2]", False),
    ({"type": "array", "minItems": 2, "items": {"type": "boolean"}}, "[true]", False),
    ({"type": "array", "minItems": 2, "items": {"type": "boolean"}}, "[true,false,true]", True),
    ({"type": "string", "pattern": "^[a-c]{2}-\\d+$"}, '"ab-12"', True),
    ({"type": "string", "pattern": "^[a-c]{2}-\\d+$"}, '"ad-12"', False),
    ({"type": "string", "format": "date"}, '"2024-02-29"', True),
    ({"type": "string", "format": "date"}, '"2024-13-01"', False),
    ({"type": "string", "format": "uuid"}, '"123e4567-e89b-12d3-a456-426614174000"', True),
    ({"type": "integer", "minimum": -5, "exclusiveMaximum": 100}, "99", True),
    ({"type": "integer", "minimum": -5, "exclusiveMaximum": 100}, "100", False),
    ({"type": "integer", "minimum": -5, "exclusiveMaximum": 100}, "-6", False),
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"anyOf": [
        {"$ref": "#/$defs/n"}, {"type": "null"}]}}, "required": ["next"]}},
      "$ref": "#/$defs/n"}, '{"next": {"next": null}}', True),
    ({"allOf": [{"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}]},
     '{"a": 1, "b": true}', True),
    ({"type": "object", "properties": {"a": {"type": "integer"}},
      "additionalProperties": {"type": "string"}}, '{"a": 1, "zz": "q"}', True),
    ({"type": "object", "properties": {"a": {"type": "integer"}},
      "additionalProperties": {"type": "string"}}, '{"a": 1, "zz": 2}', False),
    ({"type": ["string", "null"]}, "null", True),
])
def test_schema_grammar(schema, text, ok):
    assert accepts(schema, text) == ok


def test_integer_ranges_exact():
    for lo, hi in [(0, 0), (-5, 123), (7, None), (None, -3), (10, 10000), (-999, -10)]:
        a = Automaton(Grammar("root ::= " + int_range(lo, hi)))
        for x in list(range(-1200, 1200)) + [10 ** 5, -10 ** 5, 12345678]:
            want = (lo is None or x >= lo) and (hi is None or x <= hi)
            assert a.matches(str(x).encode()) == want, (lo, hi, x)
        assert not a.matches(b"007") and not a.matches(b"-0")


@pytest.mark.parametrize("schema,words", [
    (5, "must be an object"),
    ({"type": 123}, "type"), ({"type": "hiccup"}, "hiccup"),
    ({"required": 5}, "required must be an array"),
    ({"properties": {"a": {}}, "required": [1]}, "property names"),
    ({"enum": 5}, "enum must be an array"), ({"enum": []}, "enum is empty"),
    ({"type": "string", "minLength": "a"}, "minLength must be a non-negative integer"),
    ({"type": "string", "maxLength": -1}, "maxLength"),
    ({"type": "array", "items": 5}, "items must be a schema"),
    ({"properties": [{"a": 1}]}, "properties must be an object"),
    ({"type": "array", "maxItems": "3"}, "maxItems must be a non-negative integer"),
    ({"type": "array", "minItems": 3, "maxItems": 2}, "below minItems"),
    ({"$ref": "#/nope"}, "points nowhere"), ({"$ref": "http://x/y"}, "only local"),
    ({"anyOf": 3}, "anyOf must be an array"),
    ({"type": "object", "additionalProperties": 3}, "additionalProperties"),
    ({"type": "integer", "minimum": "0"}, "minimum must be a number"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer"),
    ({"type": "string", "pattern": "(a"}, "missing ')'"),
    ({"type": "string", "pattern": "(?=a)"}, "lookaround"),
    ({"const": "\ud800"}, "surrogate"),
])
def test_bad_schemas_are_refused(schema, words):
    with pytest.raises(SchemaError) as e:
        to_grammar(schema)
    assert words in str(e.value)
    assert not is_limit_error(e.value)


def test_huge_enum_is_refused_quickly():
    schema = {"enum": [f"value-{i:06d}-" + "x" * 46 for i in range(20000)]}
    body = json.dumps({"json_schema": schema})
    assert len(body) > 1_000_000
    t0 = time.perf_counter()
    with pytest.raises((SchemaLimitError, GrammarError)) as e:
        from_schema(ByteTokenizer(), json.loads(body)["json_schema"])
    assert time.perf_counter() - t0 < 1.0
    assert is_limit_error(e.value)


def test_deep_schema_is_refused():
    schema = {"type": "string"}
    for _ in range(200):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaLimitError):
        to_grammar(schema)


class ByteTokenizer:
    def __init__(self):
        self.pieces = [b""] + [bytes([b]) for b in range(256)] + [b'{"', b'":', b'", "', b"  "]
        self.eog_ids = {0}
        self.n_vocab = len(self.pieces)

    def is_control(self, token):
        return token == 0

    def token_to_piece(self, token, special=True):
        return self.pieces[token]


def test_random_decoding_yields_valid_instances():
    tok = ByteTokenizer()
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 4}, "n": {"type": "integer", "minimum": 1,
                                                           "maximum": 20},
        "ok": {"type": "boolean"}, "kind": {"enum": ["a", "b"]},
        "xs": {"type": "array", "items": {"type": "number"}, "maxItems": 2}},
        "required": ["name", "n", "ok", "kind", "xs"]}
    for seed in range(15):
        rng = random.Random(seed)
        c = from_schema(tok, schema)
        sampler = Sampler(SamplingParams(temperature=1.0, top_k=40, seed=seed))
        out = b""
        for _ in range(400):
            t = c.sample(sampler, [rng.gauss(0, 3) for _ in range(tok.n_vocab)], [])
            if t == 0:
                break
            out += tok.token_to_piece(t)
            if c.advance(t):
                break
        value = json.loads(out)
        assert validate(value, schema) == [], out


def test_validate():
    assert validate({"name": "Bo", "age": 3}, PERSON) == []
    errors = validate({"name": 1}, PERSON)
    assert any("age" in e for e in errors) and any("name" in e for e in errors)
    assert validate([1, "x"], {"prefixItems": [{"type": "integer"}, {"type": "integer"}]})
