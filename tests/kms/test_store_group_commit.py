"""The KMS store's group commit on SQLite: concurrent transactions share a COMMIT, and a job that
raises (a refusal, or a fault of its own) is rolled back alone (its savepoint), the others in its
group are committed; a database error fails the group."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from anode.kms.store import KmsStore, Taken, nonces

PAYMASTER = "0x" + "ab" * 20


def test_concurrent_transactions_share_commits_and_a_refused_one_is_rolled_back_alone(tmp_path: Path) -> None:
    store = KmsStore(f"sqlite:///{tmp_path / 'kms.db'}")
    store.migrate()
    assert store._group is not None
    groups = []
    begin = store._group._begin

    def counted() -> Any:
        groups.append(1)
        return begin()

    store._group._begin = counted
    start = threading.Barrier(24)
    outcomes: dict[int, str] = {}

    def job(i: int) -> None:
        def work(cursor: Any) -> None:
            store.burn_nonce(cursor, PAYMASTER, f"0x{i:064x}")
            time.sleep(0.002)  # hold the writer: the others queue behind it
            if i % 3 == 0:
                raise Taken("nonce")
            if i % 5 == 1:
                raise ValueError("a fault of this job alone")

        start.wait()
        try:
            store.transact(work)
            outcomes[i] = "ok"
        except Taken:
            outcomes[i] = "taken"
        except ValueError:
            outcomes[i] = "fault"

    threads = [threading.Thread(target=job, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with store.engine.connect() as connection:
        kept = {int(n, 16) for n in connection.execute(sa.select(nonces.c.nonce)).scalars()}
    store.close()
    expected = {i: "taken" if i % 3 == 0 else "fault" if i % 5 == 1 else "ok" for i in range(24)}
    assert outcomes == expected
    assert kept == {i for i, outcome in expected.items() if outcome == "ok"}
    assert len(groups) < 24  # some transactions were written together


def test_a_database_error_fails_the_whole_group(tmp_path: Path) -> None:
    store = KmsStore(f"sqlite:///{tmp_path / 'kms.db'}")
    store.migrate()

    def broken(cursor: Any) -> None:
        cursor.execute("INSERT INTO no_such_table VALUES (1)")

    from anode.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        store.transact(broken)
    store.transact(lambda cursor: store.burn_nonce(cursor, PAYMASTER, "0x01"))  # the next group is written
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(nonces)).scalar_one() == 1
    store.close()
