"""Policies in the database: seeded from settings at start-up, managed through the API at run time.

Seeding is idempotent by id. A policy that came from the settings file (``source = settings``)
follows the file: a changed entry updates it at the next start. Once a policy has been written
through the API (``source = api``) the API's version wins, and a differing settings entry is
only logged. A policy deleted through the API comes back at the next start while it is still
in the settings file.

The hot path reads ``snapshot()``: every policy, indexed by chain, type and target (``PolicySet``:
a policy for another wallet, contract or chain costs an operation nothing), cached for
``refresh_seconds``. Writes through
this repository refresh it at once; writes by another process are seen within that interval.
A database that cannot be read fails closed (``StoreUnavailable``): no rules, no sponsorship.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import ValidationError

from anode.errors import ConfigError, StoreUnavailable
from anode.policy.errors import PolicyExists, PolicyNotFound
from anode.policy.evaluate import PolicySet
from anode.policy.models import Policy
from anode.store.policies import policies
from anode.store.snapshot import RefreshedCopy

log = logging.getLogger("anode.policy")
T = TypeVar("T")
SETTINGS = "settings"
API = "api"


def validation_message(exc: ValidationError, where: str) -> str:
    """``where.field: message`` for each error, never echoing the input (it may hold a secret)."""
    lines = []
    for error in exc.errors():
        path = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
        lines.append(f"{path}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


class PolicyRepository:
    def __init__(
        self, engine: sa.Engine, *, refresh_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._copy = RefreshedCopy(self._load_snapshot, refresh_seconds=refresh_seconds, what="policies", clock=clock)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="anode-policies")

    # -- start-up ---------------------------------------------------------------------------

    def seed(self, raw: Sequence[dict[str, Any]]) -> list[Policy]:
        """Write the settings' ``policies:`` (validated first: a bad entry stops start-up)."""
        seeds: list[Policy] = []
        for index, entry in enumerate(raw):
            try:
                seeds.append(Policy.model_validate(entry))
            except ValidationError as exc:
                raise ConfigError("invalid policy: " + validation_message(exc, f"policies[{index}]")) from None
        ids = [policy.id for policy in seeds]
        if len(ids) != len(set(ids)):
            raise ConfigError("policies: each id may appear once")
        for policy in seeds:
            try:
                self._seed_one(policy)
            except sa.exc.IntegrityError:  # another process seeded it a moment ago
                pass
            except sa.exc.SQLAlchemyError as exc:
                raise ConfigError(f"policies could not be seeded into the database ({type(exc).__name__})") from None
        self._copy.invalidate()
        return seeds

    def _seed_one(self, policy: Policy) -> None:
        now = datetime.now(UTC)
        with self._engine.begin() as connection:
            row = connection.execute(
                sa.select(policies.c.document, policies.c.source).where(policies.c.id == policy.id)
            ).first()
            if row is None:
                connection.execute(
                    policies.insert().values(
                        id=policy.id, document=policy.document(), source=SETTINGS, created_at=now, updated_at=now
                    )
                )
                return
            if row.document == policy.document():
                return
            if row.source == SETTINGS:
                connection.execute(
                    policies.update()
                    .where(policies.c.id == policy.id)
                    .values(document=policy.document(), updated_at=now)
                )
                log.info("policy %s updated from the settings file", policy.id)
            else:
                log.warning(
                    "policy %s differs from the settings file but was changed through the API: keeping the API's",
                    policy.id,
                )

    # -- reads ------------------------------------------------------------------------------

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, work, *args)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the policy store could not be used ({type(exc).__name__})") from None

    def _load_all(self) -> list[Policy]:
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(policies.c.id, policies.c.document).order_by(policies.c.id)).all()
        return [_parse(row.id, row.document) for row in rows]

    def _load_one(self, policy_id: str) -> Policy | None:
        with self._engine.connect() as connection:
            document = connection.execute(
                sa.select(policies.c.document).where(policies.c.id == policy_id)
            ).scalar_one_or_none()
        return None if document is None else _parse(policy_id, document)

    async def snapshot(self) -> PolicySet:
        """Every policy, at most ``refresh_seconds`` old (``anode/store/snapshot.py``), indexed for ``evaluate``."""
        return await self._copy.get()

    async def _load_snapshot(self) -> PolicySet:
        return PolicySet(await self._run(self._load_all))

    async def list(self) -> list[Policy]:
        return await self._run(self._load_all)

    async def get(self, policy_id: str) -> Policy:
        policy = await self._run(self._load_one, policy_id)
        if policy is None:
            raise PolicyNotFound(f"no policy with id {policy_id!r}", data={"id": policy_id})
        return policy

    async def stored_secret(self, policy_id: str) -> str | None:
        """The webhook secret kept for ``policy_id`` (for an update that leaves it out)."""

        def read() -> str | None:
            with self._engine.connect() as connection:
                document = connection.execute(
                    sa.select(policies.c.document).where(policies.c.id == policy_id)
                ).scalar_one_or_none()
            hook = (document or {}).get("webhook") or {}
            secret = hook.get("secret")
            return secret if isinstance(secret, str) else None

        return await self._run(read)

    # -- writes -----------------------------------------------------------------------------

    async def create(self, policy: Policy) -> Policy:
        def insert() -> bool:
            now = datetime.now(UTC)
            try:
                with self._engine.begin() as connection:
                    connection.execute(
                        policies.insert().values(
                            id=policy.id, document=policy.document(), source=API, created_at=now, updated_at=now
                        )
                    )
            except sa.exc.IntegrityError:
                return False
            return True

        if not await self._run(insert):
            raise PolicyExists(f"a policy with id {policy.id!r} exists: change it with PUT", data={"id": policy.id})
        self._copy.invalidate()
        return policy

    async def replace(self, policy: Policy) -> Policy:
        def update() -> int:
            with self._engine.begin() as connection:
                result = connection.execute(
                    policies.update()
                    .where(policies.c.id == policy.id)
                    .values(document=policy.document(), source=API, updated_at=datetime.now(UTC))
                )
            return result.rowcount

        if not await self._run(update):
            raise PolicyNotFound(f"no policy with id {policy.id!r}", data={"id": policy.id})
        self._copy.invalidate()
        return policy

    async def delete(self, policy_id: str) -> None:
        def remove() -> int:
            with self._engine.begin() as connection:
                return connection.execute(policies.delete().where(policies.c.id == policy_id)).rowcount

        if not await self._run(remove):
            raise PolicyNotFound(f"no policy with id {policy_id!r}", data={"id": policy_id})
        self._copy.invalidate()

    async def aclose(self) -> None:
        self._pool.shutdown(wait=True)


def _parse(policy_id: str, document: Any) -> Policy:
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        # fail closed: a policy that cannot be read might be the one that restricts spending
        raise StoreUnavailable(
            f"stored policy {policy_id!r} is not valid ({validation_message(exc, 'policy')}): "
            "replace it with PUT /api/v1/policies/{id} or delete it"
        ) from None
