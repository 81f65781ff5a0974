"""``anode ops list``: the ledger as an operator reads it, with the filters of ``GET /api/v1/operations``
(sender in any letter case, ``--since`` inclusive, ``--until`` exclusive, UTC unless an offset is
given) and errors that say what to do: a time it cannot read, a database not migrated yet.

The CLI runs in process (``anode.cli.main``, what the ``anode`` script calls) on a SQLite file.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from anode.cli import main
from anode.store.database import create_engine, upgrade
from anode.store.tables import sponsorships
from anode.userop.codec import checksum
from tests.support.cli import CHAINS

#: as the ledger stores senders: checksummed
SENDER_A = checksum(bytes.fromhex("a1" * 20))
SENDER_B = checksum(bytes.fromhex("b2" * 20))
#: (sender, created_at UTC, user_op_hash) of the rows the ledger holds
ROWS = [
    (SENDER_A, datetime(2025, 1, 31, 9, 0, tzinfo=UTC), "0x" + "01" * 32),
    (SENDER_B, datetime(2025, 1, 31, 12, 0, tzinfo=UTC), "0x" + "02" * 32),
    (SENDER_A, datetime(2025, 2, 1, 0, 0, tzinfo=UTC), "0x" + "03" * 32),
]


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    tree = {
        "database_url": f"sqlite:///{tmp_path / 'anode.db'}",
        "signer": {"type": "local", "private_key": "0x" + "5a" * 32},
        "chains": CHAINS,
    }
    config.write_text(yaml.safe_dump(tree))
    return config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose migrated database holds :data:`ROWS`."""
    path = write_config(tmp_path)
    engine = create_engine(f"sqlite:///{tmp_path / 'anode.db'}")
    upgrade(engine)
    with engine.begin() as connection:
        for index, (sender, created_at, op_hash) in enumerate(ROWS):
            connection.execute(
                sa.insert(sponsorships).values(
                    created_at=created_at,
                    user_op_hash=op_hash,
                    chain_id=1,
                    entry_point=CHAINS[0]["paymasters"][0]["entry_point"],  # type: ignore[index]
                    paymaster=CHAINS[0]["paymasters"][0]["address"],  # type: ignore[index]
                    sender=sender,
                    nonce=index,
                    max_gas_cost_wei=10**15,
                    valid_until=0,
                    valid_after=0,
                    signer=SENDER_B,
                    api_key_id=None,
                    method="pm_getPaymasterData",
                )
            )
    engine.dispose()
    return path


def listed(capsys: pytest.CaptureFixture[str], config: Path, *options: str) -> list[str]:
    """The userOpHashes ``anode ops list`` prints, newest first."""
    assert main(["ops", "list", "--config", str(config), *options]) == 0
    out = capsys.readouterr().out.splitlines()
    hashes = [line.rsplit(" ", 1)[-1] for line in out[1:-1]]
    assert out[-1] == f"{len(hashes)} operation(s)"
    return hashes


def refused(capsys: pytest.CaptureFixture[str], config: Path, *options: str) -> str:
    """``anode ops list`` refusing its options, as argparse does: exit 2 and one ``error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        main(["ops", "list", "--config", str(config), *options])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_lists_every_operation_newest_first(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert listed(capsys, config) == [ROWS[2][2], ROWS[1][2], ROWS[0][2]]
    assert listed(capsys, config, "--limit", "1") == [ROWS[2][2]]


@pytest.mark.parametrize("spelling", [SENDER_A, SENDER_A.lower(), "0x" + SENDER_A[2:].upper()])
def test_sender_in_any_letter_case(capsys: pytest.CaptureFixture[str], config: Path, spelling: str) -> None:
    assert listed(capsys, config, "--sender", spelling) == [ROWS[2][2], ROWS[0][2]]


def test_since_is_inclusive_and_until_exclusive(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    assert listed(capsys, config, "--since", "2025-01-31T12:00:00Z") == [ROWS[2][2], ROWS[1][2]]
    assert listed(capsys, config, "--until", "2025-01-31T12:00:00Z") == [ROWS[0][2]]
    assert listed(capsys, config, "--since", "2025-01-31", "--until", "2025-02-01") == [ROWS[1][2], ROWS[0][2]]
    # an offset is honoured; without one the time is UTC (as GET /api/v1/operations reads it)
    assert listed(capsys, config, "--since", "2025-01-31T13:00+02:00", "--until", "2025-01-31T12:00:01") == [ROWS[1][2]]
    assert listed(capsys, config, "--sender", SENDER_A.lower(), "--since", "2025-01-31T09:00:01Z") == [ROWS[2][2]]


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_time_it_cannot_read_says_the_accepted_format(
    capsys: pytest.CaptureFixture[str], config: Path, option: str
) -> None:
    line = refused(capsys, config, option, "yesterday")
    assert line.startswith(f"anode ops list: error: argument {option}: expected an ISO-8601 time")
    assert "2025-01-31T12:00:00Z" in line and "'yesterday'" in line


@pytest.mark.parametrize(("option", "value"), [("--sender", "0x1234"), ("--limit", "0"), ("--limit", "1001")])
def test_other_bad_options_are_refused_the_same_way(
    capsys: pytest.CaptureFixture[str], config: Path, option: str, value: str
) -> None:
    assert refused(capsys, config, option, value).startswith(f"anode ops list: error: argument {option}: ")


def test_an_unmigrated_database_says_to_run_the_migrations(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path)
    database = tmp_path / "anode.db"
    for state in ("absent", "empty"):
        assert main(["ops", "list", "--config", str(config)]) == 2, state
        err = capsys.readouterr().err
        assert err == (
            f"anode: the database sqlite:///{database} has no sponsorship ledger yet: "
            f"run `anode db upgrade --config {config}` (`anode serve` also migrates)\n"
        )
        if state == "absent":
            assert not database.exists(), "listing must not create the database"
            database.touch()

    assert main(["db", "upgrade", "--config", str(config)]) == 0
    capsys.readouterr()
    assert listed(capsys, config) == []
