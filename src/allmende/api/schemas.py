"""JSON Schemas as the engines decode under them: every schema a request brings (a
`response_format`, a tool's parameters) is rewritten here into one whose every value ends,
before llguidance turns it into a grammar. A pure function of the request body, so provider
and checker derive the same grammar. The bounds (the README's "Structured output" lists them):

    closed(schema)      `additionalProperties: false` on every object schema that lists its
                        properties and says nothing about others (OpenAI's strict mode): a
                        small model otherwise invents keys until `max_tokens`
    bounded(schema)     integers within ±MAX_SAFE_INTEGER (2^53 − 1, at most 16 digits: the
                        integers every JSON parser reads exactly); numbers within the same
                        range, with at most NUMBER_DECIMALS decimals and no exponent. A bound
                        the schema sets itself is kept (the intersection is decoded). Without
                        them `"population":1112200000…` ran to `max_tokens`
    any_json(depth)     `json_object`: any JSON object nested at most MAX_JSON_DEPTH deep
                        (objects and arrays), at most MAX_JSON_ITEMS properties or items in
                        each, strings of at most MAX_JSON_STRING characters (keys MAX_JSON_KEY), numbers bounded
                        as above. Greedy SmolLM2 otherwise nests `{"a":{"b":…` for ever,
                        counts `[1,2,3,…` or repeats `121212/…` inside one string

A schema's own strings and arrays keep the lengths it gives them: its author chose them, and
in tests the default model closed every string of a schema (not so in `json_object`, where
nothing guides it).
"""

from __future__ import annotations

from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
NUMBER_DECIMALS = 6
MAX_JSON_DEPTH = 5  # a json_object's nesting: the object itself and 4 levels of objects or arrays in it
MAX_JSON_ITEMS = 32  # a json_object's properties per object, items per array
MAX_JSON_STRING = 512  # characters of a json_object's string values
MAX_JSON_KEY = 64  # characters of a json_object's keys

_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_VALUES = ("const", "enum", "default", "examples", "required")


def _walk(schema: Any, rewrite: Any) -> Any:
    """`rewrite` applied to every subschema of `schema`, bottom up."""
    if isinstance(schema, list):
        return [_walk(s, rewrite) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _walk(v, rewrite) for name, v in value.items()}  # maps of names to schemas
        elif key in _VALUES or key == "x-guidance":
            out[key] = value  # values, not schemas
        else:
            out[key] = _walk(value, rewrite)
    return rewrite(schema, out)


def closed(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists its
    properties and says nothing about others: values are generated with the declared
    properties only (still valid against the schema as given)."""

    def close(original: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        if isinstance(original.get("properties"), dict) and "additionalProperties" not in original:
            out["additionalProperties"] = False
        return out

    return _walk(schema, close)


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def bounded(schema: Any) -> Any:
    """`schema` with every integer and number bounded (see the module doc)."""

    def bound(original: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        types = _types(original)
        if not types & {"integer", "number"}:
            return out
        low, high = original.get("minimum"), original.get("maximum")
        if not _number(low) and not _number(original.get("exclusiveMinimum")):
            out["minimum"] = min(-MAX_SAFE_INTEGER, high) if isinstance(high, int | float) else -MAX_SAFE_INTEGER
        if not _number(high) and not _number(original.get("exclusiveMaximum")):
            out["maximum"] = max(MAX_SAFE_INTEGER, low) if isinstance(low, int | float) else MAX_SAFE_INTEGER
        if "number" in types and "multipleOf" not in original:
            out["multipleOf"] = 10.0**-NUMBER_DECIMALS
        return out

    return _walk(schema, bound)


def any_json(depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The schema of `json_object`: an object whose values nest at most `depth` levels in all."""
    scalars: list[dict[str, Any]] = [
        {"type": "string", "maxLength": MAX_JSON_STRING},
        bounded({"type": "number"}),
        {"type": "boolean"},
        {"type": "null"},
    ]
    defs: dict[str, Any] = {"v0": {"anyOf": scalars}}
    for level in range(1, depth):
        below = {"$ref": f"#/$defs/v{level - 1}"}
        defs[f"v{level}"] = {
            "anyOf": [*scalars, {"type": "array", "items": below, "maxItems": MAX_JSON_ITEMS}, _object(below)]
        }
    return {**_object({"$ref": f"#/$defs/v{depth - 1}"}), "$defs": defs}


def _object(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "patternProperties": {f"^.{{0,{MAX_JSON_KEY}}}$": values},
        "additionalProperties": False,
        "maxProperties": MAX_JSON_ITEMS,
    }


def decodable(schema: Any) -> Any:
    """What a structured-output schema is decoded as: closed and bounded."""
    return bounded(closed(schema))
