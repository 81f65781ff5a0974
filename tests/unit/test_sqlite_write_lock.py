"""The SQLite writers' lock holds across processes (``anode serve --workers N``), not only threads.

A second process takes ``write_lock`` on the same database file and holds it until told to let
go; meanwhile this process's attempt must wait, and must get the lock once it is released.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from anode.store.database import create_engine, write_lock

HOLDER = """
import sys
from anode.store.database import create_engine, write_lock
engine = create_engine(sys.argv[1])
with write_lock(engine):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_another_process_holding_the_lock_makes_this_one_wait(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'anode.db'}"
    command = [sys.executable, "-c", HOLDER, url]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "locked"
            got = threading.Event()

            def take() -> None:
                with write_lock(create_engine(url)):
                    got.set()

            taker = threading.Thread(target=take, daemon=True)
            taker.start()
            assert not got.wait(0.3), "the lock was taken while another process held it"
            holder.stdin.write("release\n")
            holder.stdin.flush()
            assert got.wait(10), "the lock was not taken after the other process let go"
            taker.join(5)
        finally:
            holder.kill()
    lock_file = tmp_path / "anode.db.writer-lock"
    assert lock_file.exists() and lock_file.stat().st_mode & 0o777 == 0o600


def test_an_in_memory_database_has_no_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with write_lock(create_engine("sqlite://")):
        pass
    assert not list(tmp_path.iterdir())
