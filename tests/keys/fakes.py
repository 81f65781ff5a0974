"""``signer: {type: flaky, private_key: …, name: …}``: a real key in process that a test can make
fail, hang, or sign with the wrong key, at any moment, by name (``fakes.control("primary")``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from eth_utils.crypto import keccak
from pydantic import SecretStr

from anode.errors import SignerUnavailable
from anode.signers.base import EIP191_PREFIX, SignedDigest
from anode.signers.local import LocalKeySigner
from anode.signers.registry import SignerSettingsBase

Mode = Literal["ok", "fail", "hang", "wrong_key", "crash"]


@dataclass
class Control:
    mode: Mode = "ok"
    calls: int = 0
    #: fail this many calls, then behave as ``mode`` says
    fail_next: int = 0
    delay_s: float = 0.0
    #: sign EIP-191 messages only, as a Web3Signer key does (``unsafe_sign_hash`` refuses)
    message_only: bool = False


_CONTROLS: dict[str, Control] = {}


def control(name: str) -> Control:
    return _CONTROLS.setdefault(name, Control())


def reset() -> None:
    _CONTROLS.clear()


class Settings(SignerSettingsBase):
    private_key: SecretStr
    #: which ``Control`` steers it
    control: str = "default"


class FlakySigner(LocalKeySigner):
    backend = "flaky"

    def __init__(self, private_key: bytes, name: str) -> None:
        super().__init__(private_key)
        self._control = control(name)
        self._wrong = LocalKeySigner(bytes(31) + b"\x01")

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        if self._control.message_only:
            raise SignerUnavailable("flaky signer: signs EIP-191 messages only")
        return await self._sign(digest)

    async def sign_eip191(self, message_hash: bytes) -> SignedDigest:
        return await self._sign(keccak(EIP191_PREFIX + message_hash))

    async def _sign(self, digest: bytes) -> SignedDigest:
        ctl = self._control
        ctl.calls += 1
        if ctl.delay_s:
            await asyncio.sleep(ctl.delay_s)
        if ctl.fail_next > 0:
            ctl.fail_next -= 1
            raise SignerUnavailable("flaky signer: failing on purpose")
        if ctl.mode == "fail":
            raise SignerUnavailable("flaky signer: down")
        if ctl.mode == "crash":
            raise RuntimeError("flaky signer: a bug")
        if ctl.mode == "hang":
            await asyncio.sleep(3600)
        if ctl.mode == "wrong_key":
            signed = self._wrong.sign_now(digest)
            return SignedDigest(signed.digest, signed.r, signed.s, signed.v, self.address)
        return self.sign_now(digest)


def build(settings: Settings) -> FlakySigner:
    return FlakySigner(bytes.fromhex(settings.private_key.get_secret_value().removeprefix("0x")), settings.control)
