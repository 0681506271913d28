"""JSON schema to a GBNF grammar, the way llama.cpp's json-schema-to-grammar writes it,
and validation of a value against a schema.

The grammar is llama.cpp's: values are written compactly with optional whitespace
(`space`) around punctuation; objects list their required properties in the
schema's order, then the optional ones in order (any subset, still in order), then
additional properties when allowed; arrays honour items / prefixItems (or a list
in `items`), minItems, maxItems; strings minLength, maxLength, pattern (a regular
expression, anchored) and the formats date, time, date-time and uuid; integers
minimum / maximum (exclusive too); enum, const, anyOf / oneOf, allOf (objects and
enums merged), local $ref. A keyword of the wrong type is an error, never ignored.
"""

import json
import math
import re

MAX_SCHEMA_NODES = 20_000   # schema objects, values and list entries visited
MAX_DEPTH = 64

SPACE = '| " " | "\\n"{1,2} [ \\t]{0,20}'

PRIMITIVES = {
    "boolean": ('("true" | "false")', ()),
    "decimal-part": ("[0-9]{1,16}", ()),
    "integral-part": ("[0] | [1-9] [0-9]{0,15}", ()),
    "number": ('("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?',
               ("integral-part", "decimal-part")),
    "integer": ('("-"? integral-part)', ("integral-part",)),
    "value": ("object | array | string | number | boolean | null",
              ("object", "array", "string", "number", "boolean", "null")),
    "object": ('"{" space ( string ":" space value ("," space string ":" space value)* )? '
               'space "}"', ("string", "value")),
    "array": ('"[" space ( value ("," space value)* )? space "]"', ("value",)),
    "uuid": ('"\\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             '[0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\\""', ()),
    "char": ('[^"\\\\\\x7F\\x00-\\x1F] | [\\\\] (["\\\\bfnrt] | "u" [0-9a-fA-F]{4})', ()),
    "string": ('"\\"" char* "\\""', ("char",)),
    "null": ('"null"', ()),
    "date": ('[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | '
             '"3" [0-1] )', ()),
    "time": ('([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? '
             '( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )', ()),
    "date-time": ('date "T" time', ("date", "time")),
    "date-string": ('"\\"" date "\\""', ("date",)),
    "time-string": ('"\\"" time "\\""', ("time",)),
    "date-time-string": ('"\\"" date-time "\\""', ("date-time",)),
}
_RESERVED = set(PRIMITIVES) | {"root", "space"}
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(ValueError):
    """The schema is malformed or uses something we cannot decode against."""


class SchemaLimitError(SchemaError):
    """The schema is well formed but too large to compile here."""


def literal(text):
    """A GBNF string literal matching `text` exactly."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            raise SchemaError("a string in the schema holds a lone surrogate")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def json_literal(value):
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _rule_name(text):
    return re.sub(r"[^a-zA-Z0-9-]+", "-", text) or "x"


class _Converter:
    def __init__(self, root):
        self.root = root
        self.rules = {"space": SPACE}
        self.nodes = 0
        self.refs = {}          # "#/..." -> rule name (set before visiting: recursion)
        self.ref_prefix = ""    # keeps the $ref rules of several schemas apart (schema_rules)

    def tick(self, n=1):
        self.nodes += n
        if self.nodes > MAX_SCHEMA_NODES:
            raise SchemaLimitError(f"the schema is too large (more than {MAX_SCHEMA_NODES} "
                                   "nodes); simplify it")

    def add(self, name, body):
        name = _rule_name(name)
        if self.rules.get(name, body) != body:
            i = 1
            while self.rules.get(f"{name}{i}", body) != body:
                i += 1
            name = f"{name}{i}"
        self.rules[name] = body
        return name

    def primitive(self, name):
        body, deps = PRIMITIVES[name]
        self.rules[name] = body
        for d in deps:
            if d not in self.rules:
                self.primitive(d)
        return name

    # ---- keyword checks

    @staticmethod
    def _count(schema, key, path):
        v = schema.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SchemaError(f"{path}.{key} must be a non-negative integer, got {v!r}")
        return v

    @staticmethod
    def _list(schema, key, path):
        v = schema.get(key)
        if v is not None and not isinstance(v, list):
            raise SchemaError(f"{path}.{key} must be an array, got {type(v).__name__}")
        return v

    def resolve(self, ref, path):
        if not isinstance(ref, str):
            raise SchemaError(f"{path}.$ref must be a string")
        if not ref.startswith("#"):
            raise SchemaError(f"{path}.$ref: only local references (#/...) are supported, "
                              f"not {ref!r}")
        node = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"{path}.$ref {ref!r} points nowhere")
        return node

    # ---- visiting

    def visit(self, schema, name, path, depth=0):
        """The name of a rule for `schema` (added), or a GBNF expression."""
        self.tick()
        if depth > MAX_DEPTH:
            raise SchemaLimitError(f"{path}: the schema nests deeper than {MAX_DEPTH}")
        rule = "root" if not name else name
        if rule in _RESERVED and rule != "root":
            rule += "-"
        if schema is True or schema == {}:
            return self.add(rule, self.primitive("value"))
        if schema is False:
            raise SchemaError(f"{path}: the schema 'false' matches nothing")
        if not isinstance(schema, dict):
            raise SchemaError(f"{path} must be an object, got {type(schema).__name__}")
        _check_keywords(schema, path)
        sub = (name + "-") if name else ""

        if "$ref" in schema:
            ref = schema["$ref"]
            target = self.resolve(ref, path)
            if ref not in self.refs:
                self.refs[ref] = self.ref_prefix + _rule_name(ref.split("/")[-1] or "ref") + "-ref"
                self.rules.setdefault(self.refs[ref], "")          # reserve (recursion)
                body = self.visit(target, self.refs[ref] + "-body", f"{ref}", depth + 1)
                self.rules[self.refs[ref]] = body
            return self.add(rule, self.refs[ref])

        for key in ("anyOf", "oneOf"):
            branches = self._list(schema, key, path)
            if branches is not None:
                if not branches:
                    raise SchemaError(f"{path}.{key} is empty")
                alts = [self.visit(b, f"{sub}{i}", f"{path}.{key}[{i}]", depth + 1)
                        for i, b in enumerate(branches)]
                return self.add(rule, " | ".join(alts))

        parts = self._list(schema, "allOf", path)
        if parts is not None:
            return self.add(rule, self.all_of(schema, parts, name, path, depth))

        if "const" in schema:
            self.tick(_size(schema["const"]))
            return self.add(rule, json_literal(schema["const"]))
        values = self._list(schema, "enum", path)
        if values is not None:
            if not values:
                raise SchemaError(f"{path}.enum is empty")
            self.tick(sum(_size(v) for v in values))
            return self.add(rule, "(" + " | ".join(json_literal(v) for v in values) + ")")

        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind or not all(isinstance(k, str) for k in kind):
                raise SchemaError(f"{path}.type must be a type name or an array of them")
            alts = [self.visit({**schema, "type": k}, f"{sub}{k}", path, depth + 1) for k in kind]
            return self.add(rule, " | ".join(alts))
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            elif any(k in schema for k in ("minLength", "maxLength", "pattern", "format")):
                kind = "string"
            else:
                return self.add(rule, self.primitive("value"))
        if not isinstance(kind, str) or kind not in _TYPES:
            raise SchemaError(f"{path}.type {kind!r} is not one of {', '.join(_TYPES)}")
        return self.add(rule, getattr(self, "_" + kind)(schema, name, sub, path, depth))

    def all_of(self, schema, parts, name, path, depth):
        props, required, enums = [], set(), None
        for i, part in enumerate(parts):
            p = f"{path}.allOf[{i}]"
            if isinstance(part, dict) and "$ref" in part:
                part = self.resolve(part["$ref"], p)
            if not isinstance(part, dict):
                raise SchemaError(f"{p} must be an object")
            for alt in part.get("anyOf") or [part]:
                if isinstance(alt, dict) and "$ref" in alt:
                    alt = self.resolve(alt["$ref"], p)
                if not isinstance(alt, dict):
                    raise SchemaError(f"{p} must be an object")
                is_required = "anyOf" not in part
                got = self._properties(alt, p)
                props.extend(got)
                if is_required:
                    required |= set(self._required(alt, p) or [k for k, _ in got])
                if "enum" in alt:
                    vals = self._list(alt, "enum", p)
                    enums = vals if enums is None else [v for v in enums if v in vals]
        if enums:
            return "(" + " | ".join(json_literal(v) for v in enums) + ")"
        return self.object_rule(props, required, name, None, path, depth)

    # ---- types

    def _properties(self, schema, path):
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            raise SchemaError(f"{path}.properties must be an object, got "
                              f"{type(props).__name__}")
        return list(props.items())

    def _required(self, schema, path):
        req = self._list(schema, "required", path)
        if req is not None and not all(isinstance(k, str) for k in req):
            raise SchemaError(f"{path}.required must be an array of property names")
        return req

    def _object(self, schema, name, sub, path, depth):
        props = self._properties(schema, path)
        required = set(self._required(schema, path) or [])
        extra = schema.get("additionalProperties", None if props else True)
        if extra is not None and not isinstance(extra, (bool, dict)):
            raise SchemaError(f"{path}.additionalProperties must be a boolean or a schema")
        if not props and (extra is True or extra == {}):
            return self.primitive("object")
        return self.object_rule(props, required, name, extra if extra not in (False,) else None,
                                path, depth)

    def object_rule(self, props, required, name, extra, path, depth):
        sub = (name + "-") if name else ""
        kv = {}
        req, opt = [], []
        for key, prop in props:
            value = self.visit(prop, sub + key, f"{path}.properties.{key}", depth + 1)
            kv[key] = self.add(f"{sub}{key}-kv", f'{json_literal(key)} space ":" space {value}')
            (req if key in required else opt).append(key)
        if extra is not None and extra is not False:
            value = (self.primitive("value") if extra is True or extra == {}
                     else self.visit(extra, f"{sub}additional-value", f"{path}."
                                     "additionalProperties", depth + 1))
            key_rule = self.primitive("string")
            kv["*"] = self.add(f"{sub}additional-kv", f'{key_rule} ":" space {value}')
            opt.append("*")
        if not req and not opt:
            return '"{" space "}"'
        body = '"{" space ' + ' "," space '.join(kv[k] for k in req)
        if opt:
            def chain(keys, first_optional):
                k = keys[0]
                comma = f'( "," space {kv[k]} )'
                if first_optional:
                    out = comma + ("*" if k == "*" else "?")
                else:
                    out = kv[k] + (f" {comma}*" if k == "*" else "")
                if len(keys) > 1:
                    out += " " + self.add(f"{sub}{_rule_name(k)}-rest", chain(keys[1:], True))
                return out
            alts = " | ".join(chain(opt[i:], False) for i in range(len(opt)))
            body += f' ( "," space ( {alts} ) )?' if req else f" ( {alts} )?"
        return body + ' space "}"'

    def _array(self, schema, name, sub, path, depth):
        items = schema.get("items")
        prefix = self._list(schema, "prefixItems", path)
        if isinstance(items, list):
            prefix, items = items, None
        lo = self._count(schema, "minItems", path) or 0
        hi = self._count(schema, "maxItems", path)
        if hi is not None and hi < lo:
            raise SchemaError(f"{path}: maxItems {hi} is below minItems {lo}")
        if items is not None and not isinstance(items, (dict, bool)):
            raise SchemaError(f"{path}.items must be a schema (an object), got "
                              f"{type(items).__name__}")
        if prefix is not None:
            parts = [self.visit(s, f"{sub}tuple-{i}", f"{path}.prefixItems[{i}]", depth + 1)
                     for i, s in enumerate(prefix)]
            return '"[" space ' + ' "," space '.join(parts) + ' space "]"'
        if (items is None or items is True or items == {}) and lo == 0 and hi is None:
            return self.primitive("array")
        item = self.visit(items if items is not None else {}, f"{sub}item", f"{path}.items",
                          depth + 1)
        return '"[" space ' + repetition(item, lo, hi, '"," space') + ' space "]"'

    def _string(self, schema, name, sub, path, depth):
        pattern = schema.get("pattern")
        fmt = schema.get("format")
        lo = self._count(schema, "minLength", path) or 0
        hi = self._count(schema, "maxLength", path)
        if hi is not None and hi < lo:
            raise SchemaError(f"{path}: maxLength {hi} is below minLength {lo}")
        if pattern is not None:
            if not isinstance(pattern, str):
                raise SchemaError(f"{path}.pattern must be a string")
            return '"\\"" ' + regex_to_gbnf(pattern, f"{path}.pattern") + ' "\\""'
        if fmt is not None and not isinstance(fmt, str):
            raise SchemaError(f"{path}.format must be a string")
        if fmt == "uuid":
            return self.primitive("uuid")
        if fmt in ("date", "time", "date-time"):
            return self.primitive(fmt + "-string")
        if lo or hi is not None:
            return '"\\"" ' + repetition(self.primitive("char"), lo, hi) + ' "\\""'
        return self.primitive("string")

    def _number(self, schema, name, sub, path, depth):
        _bounds(schema, path)
        return self.primitive("number")

    def _integer(self, schema, name, sub, path, depth):
        lo, hi = _bounds(schema, path)
        if lo is None and hi is None:
            return self.primitive("integer")
        lo = None if lo is None else math.ceil(lo)
        hi = None if hi is None else math.floor(hi)
        if lo is not None and hi is not None and lo > hi:
            raise SchemaError(f"{path}: no integer lies between minimum and maximum")
        return "(" + int_range(lo, hi) + ")"

    def _boolean(self, schema, name, sub, path, depth):
        return self.primitive("boolean")

    def _null(self, schema, name, sub, path, depth):
        return self.primitive("null")

    def grammar(self):
        root = self.visit(self.root, "", "$")
        if root != "root":
            self.rules["root"] = root
        lines = [f"root ::= {self.rules['root']}"]
        lines += [f"{k} ::= {v}" for k, v in sorted(self.rules.items()) if k != "root"]
        return "\n".join(lines) + "\n"


_KEYWORD_KINDS = {
    "required": (list, "an array of property names"), "properties": (dict, "an object"),
    "enum": (list, "an array"), "anyOf": (list, "an array"), "oneOf": (list, "an array"),
    "allOf": (list, "an array"), "prefixItems": (list, "an array"),
    "items": ((dict, bool, list), "a schema (an object)"),
    "additionalProperties": ((dict, bool), "a boolean or a schema"),
    "pattern": (str, "a string"), "format": (str, "a string"), "$ref": (str, "a string"),
    "$defs": (dict, "an object"), "definitions": (dict, "an object"),
    "type": ((str, list), "a type name or an array of them"),
}


def _check_keywords(schema, path):
    """Every keyword we read has the JSON type the specification gives it: a schema
    that says `required: 5` is refused, not half-applied."""
    for key, (kinds, words) in _KEYWORD_KINDS.items():
        if key in schema and not isinstance(schema[key], kinds):
            raise SchemaError(f"{path}.{key} must be {words}, got "
                              f"{type(schema[key]).__name__}")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        _Converter._count(schema, key, path)
    _bounds(schema, path)


def _size(value):
    """Nodes in a JSON value (limits the work an enum or const may ask for)."""
    if isinstance(value, dict):
        return 1 + sum(_size(v) for v in value.values()) + len(value)
    if isinstance(value, list):
        return 1 + sum(_size(v) for v in value)
    if isinstance(value, str):
        return 1 + len(value) // 64
    return 1


def _bounds(schema, path):
    """(minimum, maximum), the exclusive forms folded in for integers' sake."""
    out = []
    for key, exclusive, step in (("minimum", "exclusiveMinimum", 1),
                                 ("maximum", "exclusiveMaximum", -1)):
        v = schema.get(key)
        x = schema.get(exclusive)
        for k, val in ((key, v), (exclusive, x)):
            if val is not None and not isinstance(val, bool) and not (
                    isinstance(val, (int, float)) and math.isfinite(val)):
                raise SchemaError(f"{path}.{k} must be a number, got {val!r}")
        bound = v
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            xb = math.floor(x) + 1 if step > 0 else math.ceil(x) - 1
            bound = xb if bound is None else (max(bound, xb) if step > 0 else min(bound, xb))
        out.append(bound)
    return tuple(out)


def repetition(item, lo, hi, separator=None):
    """GBNF for `item` repeated lo..hi times (hi None: unbounded), separated."""
    if separator is None:
        if hi is None:
            return f"{item}{{{lo},}}"
        return f"{item}{{{lo},{hi}}}" if lo != hi else f"{item}{{{lo}}}"
    if hi == 0:
        return ""
    rest = repetition(f"( {separator} {item} )", max(lo - 1, 0), None if hi is None else hi - 1)
    first = f"{item} {rest}"
    return first if lo > 0 else f"( {first} )?"


# ---------------------------------------------------------------- integer ranges

def _digits(lo, hi):
    """GBNF for decimal strings of equal length between lo and hi (strings)."""
    if not lo:
        return ""
    if lo[0] == hi[0]:
        return f'"{lo[0]}" ' + _digits(lo[1:], hi[1:])
    n = len(lo) - 1
    tail = f" [0-9]{{{n}}}" if n else ""
    if lo[1:] == "0" * n and hi[1:] == "9" * n:
        return f"[{lo[0]}-{hi[0]}]" + tail
    alts = []
    if lo[1:] == "0" * n:
        alts.append(f"[{lo[0]}-{int(hi[0]) - 1}]" + tail if int(hi[0]) - 1 > int(lo[0])
                    else f'"{lo[0]}"' + tail)
    else:
        alts.append(f'"{lo[0]}" ' + _digits(lo[1:], "9" * n))
        if int(hi[0]) - int(lo[0]) > 1:
            alts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]" + tail)
    if hi[1:] == "9" * n:
        alts.append(f'"{hi[0]}"' + tail)
    else:
        alts.append(f'"{hi[0]}" ' + _digits("0" * n, hi[1:]))
    return "(" + " | ".join(a.strip() for a in alts) + ")"


def _natural_range(lo, hi):
    """Non-negative integers lo..hi (hi None: up to 16 digits) without leading zeros."""
    alts = []
    hi_len = len(str(hi)) if hi is not None else 16
    for n in range(len(str(lo)), hi_len + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = min(hi, 10 ** n - 1) if hi is not None else 10 ** n - 1
        if a <= b:
            alts.append(_digits(str(a), str(b)).strip())
    return " | ".join(alts)


def int_range(lo, hi):
    """GBNF for the integers lo..hi (either may be None: unbounded)."""
    big = 10 ** 16 - 1
    alts = []
    if lo is None or lo < 0:
        neg_hi = big if lo is None else -lo           # magnitudes of negatives
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        if neg_lo <= neg_hi:
            alts.append('"-" (' + _natural_range(neg_lo, neg_hi) + ")")
    if hi is None or hi >= 0:
        alts.append(_natural_range(max(lo or 0, 0), hi))
    return " | ".join(alts)


# ---------------------------------------------------------------- patterns

_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " \\t\\n\\r"}
_NEG_ESCAPES = {"D": "0-9", "W": "a-zA-Z0-9_", "S": " \\t\\n\\r"}


def regex_to_gbnf(pattern, where="pattern"):
    """A JSON-schema regular expression (anchored at both ends) as a GBNF expression."""
    p = pattern
    if p.startswith("^"):
        p = p[1:]
    if p.endswith("$") and not p.endswith("\\$"):
        p = p[:-1]
    pos = 0

    def fail(msg):
        raise SchemaError(f"{where}: {msg} at character {pos} of {pattern!r}")

    def esc_char(c):
        if c in '"\\':
            return "\\" + c
        if ord(c) < 0x20:
            return f"\\x{ord(c):02X}"
        return c

    def class_char(c):
        return "\\" + c if c in "]\\-^[" else esc_char(c)

    def alternation():
        nonlocal pos
        alts = [sequence()]
        while pos < len(p) and p[pos] == "|":
            pos += 1
            alts.append(sequence())
        return "(" + " | ".join(a or '""' for a in alts) + ")"

    def sequence():
        nonlocal pos
        items = []
        while pos < len(p) and p[pos] not in "|)":
            c = p[pos]
            if c == "(":
                pos += 1
                if p.startswith("?:", pos):
                    pos += 2
                elif p.startswith("?", pos):
                    fail("lookaround and named groups are not supported")
                item = alternation()
                if pos >= len(p) or p[pos] != ")":
                    fail("missing ')'")
                pos += 1
            elif c == "[":
                end = pos + 1
                if end < len(p) and p[end] == "^":
                    end += 1
                if end < len(p) and p[end] == "]":
                    end += 1
                body = []
                neg = p[pos + 1:pos + 2] == "^"
                i = pos + (2 if neg else 1)
                while i < len(p) and p[i] != "]":
                    if p[i] == "\\" and i + 1 < len(p):
                        e = p[i + 1]
                        if e in _CLASS_ESCAPES:
                            body.append(_CLASS_ESCAPES[e])
                        elif e in "nrt":
                            body.append("\\" + e)
                        else:
                            body.append(class_char(e))
                        i += 2
                    else:
                        body.append("-" if p[i] == "-" else class_char(p[i]))
                        i += 1
                if i >= len(p):
                    fail("missing ']'")
                item = "[" + ("^" if neg else "") + "".join(body) + "]"
                pos = i + 1
            elif c == ".":
                item = "[^\\n\\r]"
                pos += 1
            elif c == "\\":
                if pos + 1 >= len(p):
                    fail("dangling backslash")
                e = p[pos + 1]
                pos += 2
                if e in _CLASS_ESCAPES:
                    item = "[" + _CLASS_ESCAPES[e] + "]"
                elif e in _NEG_ESCAPES:
                    item = "[^" + _NEG_ESCAPES[e] + "]"
                elif e in "nrt":
                    item = '"\\' + e + '"'
                elif e.isalnum():
                    fail(f"the escape \\{e} is not supported")
                else:
                    item = '"' + esc_char(e) + '"'
            elif c in "*+?{":
                fail(f"'{c}' has nothing to repeat")
            else:
                item = '"' + esc_char(c) + '"'
                pos += 1
            # quantifiers
            while pos < len(p) and p[pos] in "*+?{":
                q = p[pos]
                if q == "{":
                    m = re.match(r"\{(\d+)(,(\d*))?\}", p[pos:])
                    if not m:
                        fail("malformed {m,n}")
                    lo = int(m.group(1))
                    hi = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
                    pos += m.end()
                    item = f"({item}){{{lo}{'' if hi == lo else ',' + ('' if hi is None else str(hi))}}}"
                else:
                    item = f"({item}){q}"
                    pos += 1
                if pos < len(p) and p[pos] in "?+":     # lazy/possessive: same language
                    pos += 1
            items.append(item)
        return " ".join(items)

    out = alternation()
    if pos != len(p):
        fail("unbalanced ')'")
    return out


# ---------------------------------------------------------------- entry points

def to_grammar(schema):
    """The GBNF text for `schema` (a parsed JSON schema). Raises SchemaError."""
    return _Converter(schema).grammar()


def schema_rules(named):
    """GBNF rules (no root) for several schemas in one grammar: {rule name: schema},
    each named rule matching its schema's JSON (helper rules are shared). Raises
    SchemaError."""
    conv = _Converter(None)
    for name, schema in named.items():
        conv.root, conv.refs, conv.ref_prefix = schema, {}, name + "-"
        top = conv.visit(schema, name, "$")
        if top != name:
            conv.rules[name] = top
    return "".join(f"{k} ::= {v}\n" for k, v in sorted(conv.rules.items()))


def validate(value, schema, root=None, path="$"):
    """Errors (a list of strings) of `value` against `schema`: the keywords the
    grammar enforces plus minimum/maximum for all numbers. Empty when it validates."""
    root = schema if root is None else root
    conv = _Converter(root)
    if isinstance(schema, dict) and "$ref" in schema:
        schema = conv.resolve(schema["$ref"], path)
    if schema is True or not isinstance(schema, dict):
        return []
    errors = []
    for part in schema.get("allOf") or []:
        errors += validate(value, part, root, path)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        if not any(not validate(value, b, root, path) for b in branches):
            errors.append(f"{path}: matches none of the alternatives")
        return errors
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of the allowed values")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            return errors + [f"{path}: {value!r} is not of type {kind}"]
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for k in schema.get("required") or []:
            if k not in value:
                errors.append(f"{path}: missing property {k!r}")
        extra = schema.get("additionalProperties", True)
        for k, v in value.items():
            if k in props:
                errors += validate(v, props[k], root, f"{path}.{k}")
            elif extra is False:
                errors.append(f"{path}: unexpected property {k!r}")
            elif isinstance(extra, dict):
                errors += validate(v, extra, root, f"{path}.{k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        prefix = schema.get("prefixItems") or (schema.get("items")
                                               if isinstance(schema.get("items"), list) else [])
        for i, (v, s) in enumerate(zip(value, prefix)):
            errors += validate(v, s, root, f"{path}[{i}]")
        if isinstance(schema.get("items"), dict):
            for i, v in enumerate(value[len(prefix):], len(prefix)):
                errors += validate(v, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
        if isinstance(schema.get("pattern"), str) and not re.fullmatch(schema["pattern"].lstrip(
                "^").rstrip("$"), value):
            errors.append(f"{path}: does not match {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: above {schema['maximum']}")
    return errors


def _is_type(value, kind):
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return False
