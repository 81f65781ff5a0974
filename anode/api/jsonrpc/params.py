"""Positional parameter schemas for JSON-RPC methods, with errors that name the parameter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anode.errors import InvalidRequest


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    required: bool = True
    kinds: tuple[type, ...] = ()


def bind(method: str, params: Any, schema: tuple[Param, ...]) -> dict[str, Any]:
    """Check a positional params array against ``schema``; return values by name."""
    if params is None:
        params = []
    if isinstance(params, dict):
        raise InvalidRequest(f"{method} takes positional params: [{', '.join(p.name for p in schema)}]")
    if not isinstance(params, list):
        raise InvalidRequest("params must be an array")
    if len(params) > len(schema):
        raise InvalidRequest(f"{method} takes at most {len(schema)} params: [{', '.join(p.name for p in schema)}]")
    bound: dict[str, Any] = {}
    for index, param in enumerate(schema):
        value = params[index] if index < len(params) else None
        if value is None:
            if param.required:
                raise InvalidRequest(f"{method}: param {index} ({param.name}) is required", field=param.name)
        elif param.kinds and not isinstance(value, param.kinds):
            kinds = " or ".join("object" if k is dict else "string" for k in param.kinds)
            raise InvalidRequest(f"{method}: param {index} ({param.name}) must be {kinds}", field=param.name)
        bound[param.name] = value
    return bound


USER_OP = Param("userOp", kinds=(dict,))
ENTRY_POINT = Param("entryPoint", kinds=(str,))
CHAIN_ID = Param("chainId", kinds=(str, int))
CONTEXT = Param("context", required=False, kinds=(dict,))
