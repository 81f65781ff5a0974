"""Pipeline modules for tests: each does exactly what its config says, and records what it saw."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import BaseModel

from anode.errors import ChainUnavailable
from anode.pipeline.base import Context, Outcome
from anode.pipeline.deps import Dependencies

EVENTS: dict[str, asyncio.Event] = {}
SEEN: list[dict[str, Any]] = []
UNDONE: list[str] = []


class Config(BaseModel):
    name: str = "fake"
    stage: Literal["check", "policy"] = "check"
    verdict: Literal["continue", "block", "warning"] = "continue"
    code: str = "ANODE_999_FAKE"
    message: str = "fake says no"
    wait_for: str | None = None
    release: str | None = None
    reserve: bool = False
    #: raise ChainUnavailable (a check whose node is down) instead of deciding
    fail: bool = False
    #: seconds to take before deciding
    delay_s: float = 0.0
    #: shape the operation on its way (``ctx.op``): this paymaster verification gas limit
    paymaster_gas: int | None = None


class FakeModule:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.name
        self.stage = config.stage

    async def run(self, ctx: Context) -> Outcome:
        SEEN.append({"name": self.name, "final": ctx.final, "max_gas_cost": ctx.max_gas_cost, "sender": ctx.sender})
        if self.config.release:
            EVENTS.setdefault(self.config.release, asyncio.Event()).set()
        if self.config.wait_for:
            event = EVENTS.setdefault(self.config.wait_for, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), timeout=5)
            except TimeoutError:
                return Outcome.block("ANODE_999_SEQUENTIAL", f"{self.name} never saw {self.config.wait_for}")
        if self.config.fail:
            raise ChainUnavailable(f"{self.name}: the node is down")
        if self.config.delay_s:
            await asyncio.sleep(self.config.delay_s)
        if self.config.paymaster_gas is not None:
            ctx.op = ctx.op.model_copy(update={"paymaster_verification_gas_limit": self.config.paymaster_gas})
        if self.config.reserve and ctx.final:

            async def undo() -> None:
                UNDONE.append(self.name)

            ctx.compensations.append(undo)
        if self.config.verdict == "block":
            return Outcome.block(self.config.code, self.config.message, {"module": self.name})
        if self.config.verdict == "warning":
            return Outcome.warning(
                self.config.code,
                self.config.message,
                {"requiresConfirmation": True, "confirmationToken": "tok-123", "securityWarning": {"riskScore": 50}},
            )
        return Outcome.proceed()


def create(config: Config, deps: Dependencies) -> FakeModule:
    return FakeModule(config)


def reset() -> None:
    EVENTS.clear()
    SEEN.clear()
    UNDONE.clear()
