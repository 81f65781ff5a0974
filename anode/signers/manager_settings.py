"""The settings of ``signer:`` when it is a manager: a primary, backups, retiring keys, and how
hard to try each (``anode/signers/manager.py`` says what they mean)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anode.errors import ConfigError
from anode.signers.registry import SignerSettingsBase, signer_settings
from anode.userop.codec import checksum, parse_address


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(_Section):
    #: tries per backend (the first included) before moving on to the next one
    attempts: int = Field(2, ge=1, le=10)
    #: wait before the second try; doubled for each further one
    backoff_ms: int = Field(25, ge=0, le=60_000)


class CircuitSettings(_Section):
    #: consecutive failures that open a backend's circuit
    failures: int = Field(5, ge=1, le=10_000)
    #: how long an open circuit refuses requests before one is let through
    reset_after_s: float = Field(30.0, gt=0, le=86_400)


class BackendEntry(_Section):
    """One backend mapping as written: the backend's own fields, plus ``paymasters`` and ``name``."""

    signer: SignerSettingsBase
    #: paymaster addresses this backend may sign for; empty: all
    paymasters: tuple[str, ...] = ()
    #: label in metrics, health and the audit log; default ``<role>:<type>``
    name: str | None = Field(None, min_length=1, max_length=48, pattern=r"^[A-Za-z0-9_.:-]+$")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, raw: Any) -> Any:
        if isinstance(raw, SignerSettingsBase):
            return {"signer": raw}
        if not isinstance(raw, Mapping):
            raise ValueError("a signer backend must be a mapping with a type")
        if isinstance(raw.get("signer"), SignerSettingsBase):
            return raw
        fields = dict(raw)
        own = {key: fields.pop(key) for key in ("paymasters", "name") if key in fields}
        try:
            backend = signer_settings(fields, where="@")
        except ConfigError as exc:
            raise ValueError(exc.message.replace("@.", "").replace("@: ", "")) from None
        return {"signer": backend, **own}

    @field_validator("paymasters")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(checksum(parse_address(item)) for item in value)


class ManagerSettings(_Section):
    primary: BackendEntry
    backups: list[BackendEntry] = Field(default_factory=list)
    #: keys being rotated out: they sign only until the chain accepts another candidate
    retiring: list[BackendEntry] = Field(default_factory=list)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    timeout_ms: int = Field(2000, ge=1, le=600_000)
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)
    #: health probes and on-chain acceptance checks; 0 checks at start-up only
    health_interval_s: float = Field(10.0, ge=0, le=86_400)
    #: recover every signature of an out-of-process backend (a plugin…) to its address before returning
    #: it (~40 µs); in-process keys (local, keystore, mnemonic) sign with their own key, and the remote,
    #: KMS and HSM backends recover what their server returns themselves (once per signature)
    verify_signatures: bool = True


def signer_config(raw: Any) -> SignerSettingsBase | ManagerSettings:
    """``signer:`` as configured: a manager (``primary:`` …, or a backend with ``paymasters:``) or one backend."""
    if isinstance(raw, SignerSettingsBase | ManagerSettings):
        return raw
    if isinstance(raw, Mapping) and ("primary" in raw or "paymasters" in raw or "name" in raw):
        return ManagerSettings.model_validate(raw if "primary" in raw else {"primary": raw})
    return signer_settings(raw)


def backend_settings(settings: SignerSettingsBase | ManagerSettings) -> list[SignerSettingsBase]:
    """Every backend's own settings (primary, backups, retiring), e.g. for per-backend start-up rules."""
    if isinstance(settings, SignerSettingsBase):
        return [settings]
    return [entry.signer for entry in (settings.primary, *settings.backups, *settings.retiring)]
