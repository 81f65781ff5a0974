"""Runs the configured modules over a ``Context`` and reports what each decided and how long it took."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from anode.pipeline.base import Context, Module, Outcome, Verdict


@dataclass(frozen=True, slots=True)
class ModuleReport:
    name: str
    status: Verdict
    duration_ms: float
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class PipelineReport:
    modules: tuple[ModuleReport, ...]
    total_ms: float

    @property
    def blocked(self) -> ModuleReport | None:
        return next((m for m in self.modules if m.status is Verdict.BLOCK), None)

    @property
    def warnings(self) -> list[ModuleReport]:
        return [m for m in self.modules if m.status is Verdict.WARNING]


async def _timed(module: Module, ctx: Context) -> ModuleReport:
    start = time.perf_counter()
    outcome = await module.run(ctx)
    return ModuleReport(module.name, outcome.verdict, (time.perf_counter() - start) * 1000, outcome)


class Pipeline:
    def __init__(self, modules: list[Module]) -> None:
        self.checks = [m for m in modules if m.stage == "check"]
        self.policies = [m for m in modules if m.stage == "policy"]

    @property
    def names(self) -> list[str]:
        return [m.name for m in (*self.checks, *self.policies)]

    async def run(self, ctx: Context) -> PipelineReport:
        """Checks concurrently, then (unless one blocked) policies in order; stop at the first block."""
        start = time.perf_counter()
        reports: list[ModuleReport] = []
        if len(self.checks) == 1:
            reports.append(await _timed(self.checks[0], ctx))
        elif self.checks:
            # every check finishes before a failure propagates: one that already consumed
            # something (a confirmation token) has registered its compensation by then, so the
            # undo that follows the failure gives it back
            results = await asyncio.gather(*(_timed(m, ctx) for m in self.checks), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            reports.extend(result for result in results if isinstance(result, ModuleReport))
        blocked = any(r.status is Verdict.BLOCK for r in reports)
        # a warning not yet confirmed stops here too: nothing is reserved for an operation the user may drop
        pending = any(r.status is Verdict.WARNING for r in reports) and not ctx.confirmed
        if not blocked and not pending:
            for module in self.policies:
                report = await _timed(module, ctx)
                reports.append(report)
                if report.status is Verdict.BLOCK:
                    break
        return PipelineReport(tuple(reports), (time.perf_counter() - start) * 1000)
