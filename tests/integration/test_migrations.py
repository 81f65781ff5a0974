"""The Alembic history on SQLite and PostgreSQL: one head, and every database an older aNode left
behind reaches it with its rows intact.

Revisions 0002-0005 each branched from 0001 and aNode upgraded to "heads"; 0006 merges them, so a
plain ``upgrade head`` works. The databases met in the field are the ones tested: at 0001 only,
at the four branch heads, and one taken back down to 0001 and up again.

PostgreSQL tests run on a fresh database of the server at ``PGTEST_ADMIN_URL`` and are skipped,
saying so, when none answers; SQLite runs on a temporary file.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from anode.store.database import alembic_config, create_engine, upgrade
from anode.store.schema import metadata
from anode.store.tables import sponsorships
from tests.support.postgres import fresh_pg_database

OLD_HEADS = {"0002", "0003", "0004", "0005"}
LATER_TABLES = {
    "policies",
    "policy_usage",
    "confirmations",
    "api_keys",
    "audit_log",
    "audit_head",
    "contract_blacklist",
    "watch_cursors",
    "watch_blocks",
    "watch_lease",
    "unknown_operations",
    "deposit_samples",
    "limit_reservations",
    "limit_adjustments",
    "policy_usage_applied",
    "deposit_watch",
    "sponsorship_outcomes",
    "signer_events",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty database, no migration applied."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'anode.db'}")
        yield engine
        engine.dispose()
        return
    with fresh_pg_database("anode_migrations") as url:
        engine = create_engine(url)
        yield engine
        engine.dispose()


def head() -> str:
    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1, heads
    return heads[0]


def alembic(engine: sa.Engine, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade REVISION`` on ``engine``, the way ``anode db upgrade`` runs it."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)


def versions(engine: sa.Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def add_sponsorships(engine: sa.Engine, count: int) -> list[tuple[str, int]]:
    rows = [
        {
            "created_at": datetime(2030, 1, 1, 12, index, tzinfo=UTC),
            "user_op_hash": "0x" + f"{index:064x}",
            "chain_id": 31337,
            "entry_point": "0x0000000071727De22E5E9d8BAf0edAc6f37da032",
            "paymaster": "0x" + "07" * 20,
            "sender": "0x" + "a1" * 20,
            "nonce": 2**255 + index,  # exact past 2**63: the uint256 columns survive the migrations
            "max_gas_cost_wei": 10**18 + index,
            "valid_until": 2_000_000_000,
            "valid_after": 0,
            "signer": "0x" + "5a" * 20,
            "api_key_id": None,
            "method": "pm_getPaymasterData",
        }
        for index in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(sponsorships.insert(), rows)
    return [(row["user_op_hash"], row["nonce"]) for row in rows]


def kept_sponsorships(engine: sa.Engine) -> list[tuple[str, int]]:
    query = sa.select(sponsorships.c.user_op_hash, sponsorships.c.nonce).order_by(sponsorships.c.id)
    with engine.connect() as connection:
        return [(row.user_op_hash, row.nonce) for row in connection.execute(query)]


def assert_schema_is_current(engine: sa.Engine) -> None:
    assert versions(engine) == {head()}
    assert tables(engine) == {"sponsorships", *LATER_TABLES}
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


def test_the_history_has_one_head_that_merges_every_branch() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == [head()]
    merge = script.get_revision("0006")
    assert merge is not None and set(merge.down_revision or ()) == OLD_HEADS  # type: ignore[arg-type]
    # every revision is below the head: nothing was left on a branch of its own
    below = {revision.revision for revision in script.walk_revisions("base", head())}
    assert below == {revision.revision for revision in script.walk_revisions()}


def test_a_plain_upgrade_head_works(engine: sa.Engine) -> None:
    alembic(engine, "upgrade", "head")  # what failed with four heads ("Multiple head revisions")
    assert_schema_is_current(engine)
    upgrade(engine)  # and aNode's own upgrade is idempotent on top of it
    assert versions(engine) == {head()}


def test_a_database_at_0001_keeps_its_sponsorships(engine: sa.Engine) -> None:
    alembic(engine, "upgrade", "0001")
    assert versions(engine) == {"0001"} and tables(engine) == {"sponsorships"}
    ledger = add_sponsorships(engine, 3)
    upgrade(engine)
    assert kept_sponsorships(engine) == ledger
    assert_schema_is_current(engine)


def test_a_database_at_the_four_old_heads_upgrades_to_the_merge(engine: sa.Engine) -> None:
    """Every aNode before 0006 upgraded to "heads": alembic_version holds four rows."""
    alembic(engine, "upgrade", "0001")
    for revision in sorted(OLD_HEADS):
        alembic(engine, "upgrade", revision)
    assert versions(engine) == OLD_HEADS
    ledger = add_sponsorships(engine, 2)
    with engine.begin() as connection:  # rows of the branch tables stay too
        connection.execute(
            sa.text(
                "INSERT INTO api_keys (id, name, kind, key_sha256, created_at) "
                "VALUES ('k1', 'ops', 'admin', :digest, :at)"
            ),
            {"digest": "ab" * 32, "at": datetime(2030, 1, 1, tzinfo=UTC)},
        )
    upgrade(engine)
    assert_schema_is_current(engine)
    assert kept_sponsorships(engine) == ledger
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT name FROM api_keys")).scalars().all() == ["ops"]
        assert connection.execute(sa.text("SELECT seq FROM audit_head")).scalars().all() == [0]


def test_downgrade_to_0001_and_up_again(engine: sa.Engine) -> None:
    """Every revision has a downgrade: back to 0001 drops the later tables (and only those)."""
    upgrade(engine)
    ledger = add_sponsorships(engine, 2)
    alembic(engine, "downgrade", "0001")
    assert versions(engine) == {"0001"}
    assert tables(engine) == {"sponsorships"}
    assert kept_sponsorships(engine) == ledger
    upgrade(engine)
    assert_schema_is_current(engine)
    assert kept_sponsorships(engine) == ledger
