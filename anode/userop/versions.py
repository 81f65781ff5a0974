"""EntryPoint versions aNode serves, and the canonical addresses they live at."""

from __future__ import annotations

from enum import StrEnum


class EntryPointVersion(StrEnum):
    V06 = "v0.6"
    V07 = "v0.7"
    V08 = "v0.8"

    @property
    def packed(self) -> bool:
        """v0.7 and later carry PackedUserOperation (gas fields packed in pairs)."""
        return self is not EntryPointVersion.V06


CANONICAL_ENTRY_POINTS: dict[bytes, EntryPointVersion] = {
    bytes.fromhex("5FF137D4b0FDCD49DcA30c7CF57E578a026d2789"): EntryPointVersion.V06,
    bytes.fromhex("0000000071727De22E5E9d8BAf0edAc6f37da032"): EntryPointVersion.V07,
    bytes.fromhex("4337084D9E255Ff0702461CF8895CE9E3b5Ff108"): EntryPointVersion.V08,
}
