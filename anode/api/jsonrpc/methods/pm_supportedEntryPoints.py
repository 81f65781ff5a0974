"""``pm_supportedEntryPoints []``: the EntryPoints this server sponsors on, checksummed."""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import bind

NAME = "pm_supportedEntryPoints"


async def handle(params: Any, ctx: CallContext) -> list[str]:
    bind(NAME, params, ())
    return ctx.service.routes.entry_points
