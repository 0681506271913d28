"""JSON output by construction: a token filter for `response_format`.

At each step only tokens whose bytes keep the output a valid prefix of a JSON value
(matching a schema, when one is given) may be sampled; end-of-generation is allowed
only once the value is complete, and generation ends as soon as nothing more can
follow. The checker is a byte-level pushdown automaton over a stack of frames. It is
nondeterministic where JSON is (a number may end or go on; `anyOf` branches), so the
state is a set of stacks, each a tuple of small hashable tuples.

Schemas: type (or a list of types), properties + required (objects are written with
the required properties in the schema's order, or all properties when nothing is
required, and no others), additionalProperties (objects without properties),
items, minItems, maxItems, enum, const, anyOf / oneOf, allOf (merged), $ref to
#/$defs or #/definitions, minLength / maxLength. Keywords outside that list
(pattern, format, minimum, ...) are not enforced while decoding.
"""

import json

MAX_WS = 8          # whitespace run allowed between tokens: room for indenting, not for stalling
MAX_DIGITS = 16     # digits in one part of a number, so numbers end
MAX_CANDIDATES = 64  # how many of the best tokens are checked before looking further

_WS = frozenset(b" \t\n\r")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_ALL_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(ValueError):
    """The schema uses something we cannot decode against."""


class Schemas:
    """Schema dicts by small integer id, so frames stay hashable."""

    def __init__(self, root):
        if not isinstance(root, dict):
            raise SchemaError("the schema must be a JSON object")
        self.root = root
        self.table = []
        self.ids = {}

    def id_of(self, schema):
        key = id(schema)
        if key not in self.ids:
            self.ids[key] = len(self.table)
            self.table.append(schema)
        return self.ids[key]

    def resolve(self, schema, depth=0):
        if depth > 32:
            raise SchemaError("$ref chain too deep")
        if not isinstance(schema, dict):
            if schema is True or schema is None:
                return {}
            raise SchemaError(f"not a schema: {schema!r}")
        ref = schema.get("$ref")
        if ref is None:
            return schema
        node = self.root
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local $ref is supported, not {ref!r}")
        for part in ref[1:].split("/"):
            if not part:
                continue
            if not isinstance(node, dict) or part not in node:
                raise SchemaError(f"$ref {ref!r} points nowhere")
            node = node[part]
        return self.resolve(node, depth + 1)

    def alternatives(self, schema, depth=0):
        """The schema as a list of (type, schema) branches; enum/const as ('literal', schema)."""
        if depth > 32:
            raise SchemaError("schema nesting too deep")
        schema = self.resolve(schema)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged.update(self.resolve(part))
            schema = merged
        branches = schema.get("anyOf") or schema.get("oneOf")
        if branches:
            out = []
            for b in branches:
                out.extend(self.alternatives(b, depth + 1))
            return out
        if "const" in schema or "enum" in schema:
            return [("literal", schema)]
        kind = schema.get("type")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                kind = list(_ALL_TYPES)
        kinds = kind if isinstance(kind, list) else [kind]
        for k in kinds:
            if k not in _ALL_TYPES:
                raise SchemaError(f"unknown type {k!r}")
        return [(k, schema) for k in kinds]

    def object_keys(self, schema):
        props = schema.get("properties") or {}
        required = schema.get("required")
        if required:
            missing = [k for k in required if k not in props]
            keys = [k for k in props if k in required] + missing
        else:
            keys = list(props)
        return keys


def _literal_bytes(values):
    return tuple(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                 for v in values)


class JsonAcceptor:
    """The set of parser stacks that the bytes so far leave alive."""

    def __init__(self, schema=None):
        self.schemas = Schemas(schema if schema is not None else {"type": "object"})
        root = self.schemas.id_of(self.schemas.root)
        self.schemas.alternatives(self.schemas.root)   # fail early on bad schemas
        self.states = frozenset([(("value", root, 0),)])

    # ---- public ----

    def feed(self, data, states=None):
        """States after `data` (bytes); empty when the bytes cannot be part of the value."""
        states = self.states if states is None else states
        for byte in data:
            nxt = set()
            for stack in states:
                nxt.update(self._step(stack, byte))
            states = nxt
            if not states:
                break
        return frozenset(states)

    def advance(self, data):
        self.states = self.feed(data)
        return self.states

    @property
    def can_end(self):
        return any(not stack or (len(stack) == 1 and stack[0][0] == "num"
                                 and stack[0][1] in ("zero", "int", "frac", "exp"))
                   for stack in self.states)

    @property
    def must_end(self):
        """Complete, and nothing may follow."""
        return self.states == frozenset([()])

    # ---- the automaton ----

    def _done(self, stack):
        """The top value is complete: pop it and move its container on."""
        stack = stack[:-1]
        if not stack:
            return ()
        top = stack[-1]
        kind = top[0]
        if kind == "obj":
            _, sid, stage, index, _ws = top
            stage = "colon" if stage == "inkey" else "after"
            return stack[:-1] + (("obj", sid, stage, index, 0),)
        if kind == "arr":
            _, sid, _stage, count, _ws = top
            return stack[:-1] + (("arr", sid, "after", count + 1, 0),)
        raise AssertionError(kind)

    def _step(self, stack, c):
        if not stack:
            return ()   # the value is complete: nothing may follow
        top = stack[-1]
        kind = top[0]
        rest = stack[:-1]
        if kind == "value":
            return self._step_value(rest, top, c)
        if kind == "str":
            return self._step_string(rest, top, c)
        if kind == "num":
            return self._step_number(rest, top, c)
        if kind == "lit":
            return self._step_literal(rest, top, c)
        if kind == "obj":
            return self._step_object(rest, top, c)
        if kind == "arr":
            return self._step_array(rest, top, c)
        raise AssertionError(kind)

    def _step_value(self, rest, top, c):
        _, sid, ws = top
        if c in _WS:
            return [rest + (("value", sid, ws + 1),)] if ws < MAX_WS else []
        out = []
        S = self.schemas
        for kind, schema in S.alternatives(S.table[sid]):
            frame = self._start(kind, schema)
            if frame is not None:
                out.extend(self._step(rest + (frame,), c))
        return out

    def _start(self, kind, schema):
        """The frame that reads a value of `kind` from its first byte on."""
        S = self.schemas
        if kind == "literal":
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            return ("lit", _literal_bytes(values), 0)
        if kind == "string":
            return ("str", "start", 0, int(schema.get("minLength", 0)),
                    int(schema.get("maxLength", -1)))
        if kind in ("number", "integer"):
            return ("num", "start", kind == "integer", 0)
        if kind == "boolean":
            return ("lit", (b"true", b"false"), 0)
        if kind == "null":
            return ("lit", (b"null",), 0)
        if kind == "object":
            return ("obj", S.id_of(schema), "start", 0, 0)
        if kind == "array":
            return ("arr", S.id_of(schema), "start", 0, 0)
        return None

    def _step_literal(self, rest, top, c):
        _, candidates, n = top
        alive = tuple(x for x in candidates if len(x) > n and x[n] == c)
        out = []
        if any(len(x) == n + 1 for x in alive):
            out.append(self._done(rest + (top,)))
        longer = tuple(x for x in alive if len(x) > n + 1)
        if longer:
            out.append(rest + (("lit", longer, n + 1),))
        return out

    def _step_string(self, rest, top, c):
        _, state, count, min_len, max_len = top
        if state == "start":
            return [rest + (("str", "body", 0, min_len, max_len),)] if c == 0x22 else []
        if state == "body":
            if c == 0x22:
                return [self._done(rest + (top,))] if count >= min_len else []
            if c == 0x5C:
                return [rest + (("str", "escape", count, min_len, max_len),)]
            if c < 0x20:
                return []
            if c & 0xC0 != 0x80:    # a character starts here (not a UTF-8 continuation)
                count += 1
                if 0 <= max_len < count:
                    return []
            return [rest + (("str", "body", count, min_len, max_len),)]
        if state == "escape":
            if c in _ESCAPES or c == 0x75:
                count += 1
                if 0 <= max_len < count:
                    return []
                nxt = "u4" if c == 0x75 else "body"
                return [rest + (("str", nxt, count, min_len, max_len),)]
            return []
        # inside \uXXXX: state "uN" with N hex digits still to come
        if c not in _HEX:
            return []
        left = int(state[1]) - 1
        return [rest + (("str", f"u{left}" if left else "body", count, min_len, max_len),)]

    def _step_number(self, rest, top, c):
        _, state, integer, digits = top

        def go(new_state, new_digits=0):
            return rest + (("num", new_state, integer, new_digits),)

        nxt = None
        if state == "start":
            if c == 0x2D:
                nxt = go("sign")
            elif c == 0x30:
                nxt = go("zero")
            elif c in _DIGITS:
                nxt = go("int", 1)
        elif state == "sign":
            if c == 0x30:
                nxt = go("zero")
            elif c in _DIGITS:
                nxt = go("int", 1)
        elif state in ("zero", "int"):
            if state == "int" and c in _DIGITS and digits < MAX_DIGITS:
                nxt = go("int", digits + 1)
            elif c == 0x2E and not integer:
                nxt = go("dot")
            elif c in (0x65, 0x45) and not integer:
                nxt = go("e")
        elif state in ("dot", "frac"):
            if c in _DIGITS and digits < MAX_DIGITS:
                nxt = go("frac", digits + 1)
            elif state == "frac" and c in (0x65, 0x45):
                nxt = go("e")
        elif state in ("e", "esign"):
            if c in (0x2B, 0x2D) and state == "e":
                nxt = go("esign")
            elif c in _DIGITS:
                nxt = go("exp", 1)
        elif state == "exp":
            if c in _DIGITS and digits < 3:
                nxt = go("exp", digits + 1)
        out = [nxt] if nxt is not None else []
        # A number has no end mark: where it could end, the byte may be the container's.
        if state in ("zero", "int", "frac", "exp"):
            out.extend(self._step(self._done(rest + (top,)), c))
        return out

    def _step_object(self, rest, top, c):
        _, sid, stage, index, ws = top
        S = self.schemas
        schema = S.table[sid]
        keys = S.object_keys(schema) if "properties" in schema else None

        def frame(new_stage, new_index=index, new_ws=0):
            return ("obj", sid, new_stage, new_index, new_ws)

        if stage == "start":
            return [rest + (frame("open"),)] if c == 0x7B else []
        if c in _WS and stage in ("open", "key", "colon", "after"):
            return [rest + (frame(stage, index, ws + 1),)] if ws < MAX_WS else []
        if stage in ("open", "key"):
            if c == 0x7D and stage == "open" and (keys is None or not keys):
                return [self._done(rest + (top,))]
            if keys is None:
                key = ("str", "start", 0, 0, -1)
            elif index < len(keys):
                key = ("lit", _literal_bytes([keys[index]]), 0)
            else:
                return []
            return self._step(rest + (frame("inkey"), key), c)
        if stage == "colon":
            if c != 0x3A:
                return []
            if keys is None:
                extra = schema.get("additionalProperties", True)
                sub = {} if extra is True or extra is None else extra
                if extra is False:
                    return []
            else:
                sub = (schema.get("properties") or {}).get(keys[index], {})
            return [rest + (frame("invalue"), ("value", S.id_of(sub), 0))]
        if stage == "after":
            more = keys is None or index + 1 < len(keys)
            if c == 0x2C and more:
                return [rest + (frame("key", index + 1),)]
            if c == 0x7D and (keys is None or index + 1 >= len(keys)):
                return [self._done(rest + (top,))]
            return []
        return []

    def _step_array(self, rest, top, c):
        _, sid, stage, count, ws = top
        S = self.schemas
        schema = S.table[sid]
        min_items = int(schema.get("minItems", 0))
        max_items = int(schema.get("maxItems", -1))
        items = schema.get("items", {})
        item_id = S.id_of(items if isinstance(items, dict) else {})

        if stage == "start":
            return [rest + (("arr", sid, "open", 0, 0),)] if c == 0x5B else []
        if c in _WS and stage in ("open", "after"):
            return [rest + (("arr", sid, stage, count, ws + 1),)] if ws < MAX_WS else []
        if stage == "open":
            if c == 0x5D:
                return [self._done(rest + (top,))] if min_items == 0 else []
            if max_items == 0:
                return []
            return self._step(rest + (("arr", sid, "invalue", count, 0), ("value", item_id, 0)), c)
        if stage == "after":
            if c == 0x2C and (max_items < 0 or count < max_items):
                return [rest + (("arr", sid, "invalue", count, 0), ("value", item_id, 0))]
            if c == 0x5D and count >= min_items:
                return [self._done(rest + (top,))]
        return []


class JsonConstraint:
    """Session.generate's `constraint`: samples only tokens that keep the JSON valid."""

    def __init__(self, tokenizer, schema=None):
        self.tokenizer = tokenizer
        self.acceptor = JsonAcceptor(schema)
        self.eog = tokenizer.eog_ids

    def _fits(self, token):
        if token in self.eog:
            return self.acceptor.can_end
        if self.tokenizer.is_control(token):
            return False
        piece = self.tokenizer.token_to_piece(token)
        return bool(piece) and bool(self.acceptor.feed(piece))

    def sample(self, sampler, logits, history):
        n = len(logits)
        from runtime.sampling import as_logits
        best = [t for _, t in as_logits(logits).top(MAX_CANDIDATES)]
        allowed = [t for t in best if self._fits(t)]
        if not allowed:
            # The model wants something JSON forbids: walk down its whole ranking.
            for t in sorted(range(n), key=logits.__getitem__, reverse=True)[MAX_CANDIDATES:]:
                if self._fits(t):
                    allowed.append(t)
                    if len(allowed) >= 8:
                        break
        if not allowed:
            return min(self.eog) if self.eog else best[0]
        masked = [float("-inf")] * n
        for t in allowed:
            masked[t] = logits[t]
        return sampler.sample(masked, history)

    def advance(self, token):
        """Take the chosen token; True when the value is complete and nothing may follow."""
        self.acceptor.advance(self.tokenizer.token_to_piece(token))
        return self.acceptor.must_end


# ---------------------------------------------------------------- validation

def validate(value, schema, root=None, path="$"):
    """Errors (a list of strings) of `value` against `schema`, for the subset above
    plus minimum/maximum. Empty when it validates."""
    root = schema if root is None else root
    schemas = Schemas(root)
    schema = schemas.resolve(schema)
    errors = []
    if "allOf" in schema:
        for part in schema["allOf"]:
            errors += validate(value, part, root, path)
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        if not any(not validate(value, b, root, path) for b in branches):
            errors.append(f"{path}: matches none of the alternatives")
        return errors
    if "const" in schema and value != schema["const"]:
        errors.append(f"{path}: is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']!r}")
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
        if isinstance(schema.get("items"), dict):
            for i, v in enumerate(value):
                errors += validate(v, schema["items"], root, f"{path}[{i}]")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{path}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: longer than {schema['maxLength']}")
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
