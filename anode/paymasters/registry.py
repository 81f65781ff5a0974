"""Paymaster contract families by their configuration name: add a family here, in one line."""

from __future__ import annotations

from anode.paymasters.base import PaymasterFamily
from anode.paymasters.singleton import SingletonPaymaster
from anode.paymasters.verifying import VerifyingPaymaster

FAMILIES: dict[str, type[PaymasterFamily]] = {
    VerifyingPaymaster.name: VerifyingPaymaster,
    SingletonPaymaster.name: SingletonPaymaster,
}
