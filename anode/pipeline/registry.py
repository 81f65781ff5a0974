"""Pipeline modules by their configuration name: add a module here, in one line.

Each entry is the module path of a file defining ``Config`` (a pydantic model of its ``config:``
mapping) and ``create(config, deps) -> Module``. ``paymaster_signer`` is the signing step
itself: listed and enabled, operations that pass every module are signed; disabled, ``/process``
answers the decision only and the signing methods refuse.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError

from anode.config import ModuleEntry, error_message
from anode.errors import ConfigError
from anode.pipeline.base import Module
from anode.pipeline.deps import Dependencies

MODULES: dict[str, str] = {
    "sbt_validator": "anode.pipeline.modules.sbt",
    "pnt_balance_validator": "anode.pipeline.modules.pnt",
    "security_filter": "anode.pipeline.modules.security",
    "policy_engine": "anode.pipeline.modules.policy_engine",
}

SIGNING_STEP = "paymaster_signer"


def _create(index: int, entry: ModuleEntry, deps: Dependencies) -> Module:
    where = f"pipeline.modules[{index}] ({entry.name})"
    source = importlib.import_module(MODULES[entry.name])
    config_model: type[BaseModel] = source.Config
    try:
        config = config_model.model_validate(entry.config)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{where}.config.{field}: {error_message(error)}") from None
    module: Module = source.create(config, deps)
    return module


def check_names(entries: list[ModuleEntry]) -> None:
    known = {*MODULES, SIGNING_STEP}
    for index, entry in enumerate(entries):
        if entry.name not in known:
            raise ConfigError(
                f"pipeline.modules[{index}]: unknown module {entry.name!r} (known: {', '.join(sorted(known))})"
            )


def build_modules(entries: list[ModuleEntry], deps: Dependencies) -> tuple[list[Module], bool]:
    """The enabled modules in order, and whether the signing step is enabled."""
    check_names(entries)
    modules: list[Module] = []
    signing = False
    for index, entry in enumerate(entries):
        if entry.name == SIGNING_STEP:
            signing = entry.enabled
        elif entry.enabled:
            modules.append(_create(index, entry, deps))
    return modules, signing


def module_config(entries: list[ModuleEntry], name: str) -> dict[str, Any] | None:
    """The ``config:`` of the enabled module ``name`` (for endpoints that reuse its settings)."""
    for entry in entries:
        if entry.name == name and entry.enabled:
            return entry.config
    return None
