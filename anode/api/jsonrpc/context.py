"""What a JSON-RPC method handler receives besides its params."""

from __future__ import annotations

from dataclasses import dataclass

from anode.errors import ModuleNotConfigured
from anode.passkey.flow import PasskeyFlow
from anode.sponsorship import SponsorshipService


@dataclass(frozen=True, slots=True)
class CallContext:
    service: SponsorshipService
    api_key_id: str | None
    sponsor_name: str
    sponsor_icon: str | None
    request_id: str | None = None
    #: ``?chainId=`` of the request's URL: the chain whose bundler a relayed ``eth_*`` call goes to
    chain_id: str | None = None
    #: the passkey flow (``kms:`` in the configuration), or ``None``
    passkey: PasskeyFlow | None = None


def passkey_flow(ctx: CallContext) -> PasskeyFlow:
    if ctx.passkey is None:
        raise ModuleNotConfigured(
            "the passkey flow is not configured on this server: add kms: {urls: [...]} to its configuration",
            code="ANODE_KMS_NOT_CONFIGURED",
        )
    return ctx.passkey
