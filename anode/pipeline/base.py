"""What a pipeline module is, what it sees and what it answers.

A module gets a ``Context`` (the parsed operation, its route, the caller, shared helpers) and
answers an ``Outcome``: continue, block (with a stable code and a message that says what is
missing) or warning (the user must confirm). Modules of stage ``check`` are independent and run
concurrently; ``policy`` modules run after them, in order; signing comes last.

Adding a module: one file in ``pipeline/modules/`` defining ``Config`` (a pydantic model of its
``config:`` mapping) and ``create(config, deps) -> Module``, plus one line in
``pipeline/registry.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from anode.pipeline.security.decode import Decoded, decode_call_data
from anode.userop.codec import checksum

if TYPE_CHECKING:
    from anode.pipeline.routes import Route
    from anode.userop.models import UserOperation


class Verdict(StrEnum):
    CONTINUE = "continue"
    BLOCK = "block"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    code: str | None = None
    message: str = ""
    data: dict[str, Any] | None = None

    @classmethod
    def proceed(cls, data: dict[str, Any] | None = None) -> Outcome:
        return cls(Verdict.CONTINUE, data=data)

    @classmethod
    def block(cls, code: str, message: str, data: dict[str, Any] | None = None) -> Outcome:
        return cls(Verdict.BLOCK, code, message, data)

    @classmethod
    def warning(cls, code: str, message: str, data: dict[str, Any] | None = None) -> Outcome:
        return cls(Verdict.WARNING, code, message, data)


class Request(Protocol):
    """What modules read of the request (``anode.sponsorship.SponsorRequest``)."""

    @property
    def context(self) -> Any:
        """The caller's ``context`` object (a confirmation token, a policy id, …), or ``None``."""
        ...


@dataclass(slots=True)
class Context:
    """One operation on its way through the pipeline."""

    route: Route
    op: UserOperation
    request: Request
    #: the caller's API key id (``None`` on an open server)
    api_key_id: str | None
    #: True for final data (signatures, reservations); False for stubs (checks only, nothing reserved)
    final: bool
    #: the most wei the operation can cost the paymaster (with the paymaster's gas limits)
    max_gas_cost: int
    #: set when the request carries a valid confirmation token for this operation
    confirmed: bool = False
    #: undo actions (e.g. release a reserved limit) run if signing or recording fails
    compensations: list[Any] = field(default_factory=list)
    #: what one module works out once for the others (``decoded``: the callData, see ``decoded()``)
    facts: dict[str, Any] = field(default_factory=dict)
    #: ``verifying`` (the sponsor pays the gas) or ``erc20`` (the sender pays the sponsor in ``token``)
    mode: str = "verifying"
    #: ERC-20 mode: the token the sender pays in (checksummed); ``None`` in verifying mode
    token: str | None = None

    @property
    def sender(self) -> str:
        return checksum(self.op.sender)

    def decoded(self) -> Decoded:
        """The operation's callData decoded once for every module that reads it (the security
        filter, the policy engine), with the one decoder (``decode_call_data``)."""
        found = self.facts.get("decoded")
        if found is None:
            found = self.facts["decoded"] = decode_call_data(self.op.sender, self.op.call_data)
        return found

    @property
    def chain_id(self) -> int:
        return self.route.chain_id


class Module(Protocol):
    #: the module's name in configuration (``sbt_validator``)
    name: str
    #: ``check`` modules run concurrently; ``policy`` modules after them, in configured order
    stage: Literal["check", "policy"]

    async def run(self, ctx: Context) -> Outcome: ...
