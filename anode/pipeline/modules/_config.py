"""Shared by module files: validate a module's ``config:`` mapping into its pydantic ``Config``."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, PlainSerializer, ValidationError

from anode.config import error_message
from anode.errors import ConfigError
from anode.userop.codec import UINT256_MAX

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def parse_config(model: type[ConfigT], raw: ConfigT | dict[str, Any], module: str) -> ConfigT:
    """``raw`` as ``model``; a ``ConfigError`` naming each bad field (``sbt_validator.config.contracts.0.address``)."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in (module, "config", *error["loc"]))
            lines.append(f"  {where}: {error_message(error)}")
        raise ConfigError(f"invalid configuration of pipeline module {module}:\n" + "\n".join(lines)) from None


def parse_wei(value: Any) -> int:
    """A whole amount in the token's smallest unit: an integer or a decimal string ("100000000000000000000")."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value)
    else:
        raise ValueError(f"expected a whole amount as a decimal string such as '100000000000000000000', got {value!r}")
    if not 0 <= number <= UINT256_MAX:
        raise ValueError("amount out of range for uint256")
    return number


#: an amount in wei (or a token's smallest unit); YAML may give it as a number or, exactly, as a string
Wei = Annotated[int, BeforeValidator(parse_wei), PlainSerializer(str, return_type=str)]
