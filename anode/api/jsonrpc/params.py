"""Positional parameter schemas for JSON-RPC methods, with errors that name the parameter.

A wrong type is answered in JSON's own words: what the parameter must be, and which JSON type
arrived (``must be a hex string like "0x7a69" (or an integer), got number``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anode.errors import InvalidRequest

#: what each accepted Python type is called in a message (with its article)
_EXPECTED = {dict: "an object", list: "an array", str: "a string", int: "an integer", bool: "a boolean"}


def json_type(value: Any) -> str:
    """The JSON name of a decoded JSON value's type: null, boolean, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    required: bool = True
    kinds: tuple[type, ...] = ()
    #: what the message says the param must be; derived from ``kinds`` when empty
    expected: str = ""

    def accepts(self, value: Any) -> bool:
        if not self.kinds:
            return True
        if isinstance(value, bool) and bool not in self.kinds:
            return False  # JSON true/false is no integer, though Python's bool is an int
        return isinstance(value, self.kinds)

    def describe(self) -> str:
        return self.expected or " or ".join(_EXPECTED.get(kind, kind.__name__) for kind in self.kinds)


def bind(method: str, params: Any, schema: tuple[Param, ...]) -> dict[str, Any]:
    """Check a positional params array against ``schema``; return values by name."""
    if params is None:
        params = []
    if isinstance(params, dict):
        raise InvalidRequest(f"{method} takes positional params: [{', '.join(p.name for p in schema)}]")
    if not isinstance(params, list):
        raise InvalidRequest(f"params must be an array, got {json_type(params)}")
    if len(params) > len(schema):
        raise InvalidRequest(f"{method} takes at most {len(schema)} params: [{', '.join(p.name for p in schema)}]")
    bound: dict[str, Any] = {}
    for index, param in enumerate(schema):
        value = params[index] if index < len(params) else None
        if value is None:
            if param.required:
                raise InvalidRequest(f"{method}: param {index} ({param.name}) is required", field=param.name)
        elif not param.accepts(value):
            raise InvalidRequest(
                f"{method}: param {index} ({param.name}) must be {param.describe()}, got {json_type(value)}",
                field=param.name,
            )
        bound[param.name] = value
    return bound


USER_OP = Param("userOp", kinds=(dict,), expected="a UserOperation object")
ENTRY_POINT = Param(
    "entryPoint", kinds=(str,), expected='an address string like "0x0000000071727De22E5E9d8BAf0edAc6f37da032"'
)
CHAIN_ID = Param("chainId", kinds=(str, int), expected='a hex string like "0x7a69" (or an integer)')
#: ``chainId`` where a method may do without it (the EntryPoint is served on one chain only)
OPTIONAL_CHAIN_ID = Param("chainId", required=False, kinds=CHAIN_ID.kinds, expected=CHAIN_ID.expected)
CONTEXT = Param("context", required=False, kinds=(dict,), expected="an object")
