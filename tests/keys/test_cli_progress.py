"""Progress of long command-line work on stderr: on a terminal or with ``--progress``, never in stdout."""

from __future__ import annotations

import io
from pathlib import Path

from anode.progress import Progress
from anode.store.database import create_engine, upgrade
from tests.keys.test_audit import _config, write
from tests.support.cli import anode


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_gets_no_progress_unless_asked() -> None:
    quiet, asked = io.StringIO(), io.StringIO()
    for stream, forced in ((quiet, False), (asked, True)):
        progress = Progress("records", 4, forced=forced, stream=stream, interval=0)
        progress.advance(2)
        progress.advance(2)
        progress.done()
    assert quiet.getvalue() == ""
    assert asked.getvalue().splitlines() == [
        "records: 2 of 4 (50 %)",
        "records: 4 of 4 (100 %)",
        "records: 4 of 4 (100 %)",
    ]


def test_a_terminal_gets_one_line_redrawn_in_place() -> None:
    terminal = _Terminal()
    progress = Progress("records", None, stream=terminal, interval=0)
    progress.advance(1500)
    progress.done()
    assert terminal.getvalue() == "\rrecords: 1,500\rrecords: 1,500\n"


async def test_anode_audit_verify_and_ops_list_report_progress_on_stderr(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'anode.db'}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    await write(url, range(12))
    config = str(_config(tmp_path, url))

    plain = anode("audit", "verify", "--config", config)
    shown = anode("audit", "verify", "--config", config, "--progress")
    assert plain.returncode == shown.returncode == 0, shown.stderr
    assert plain.stdout == shown.stdout and plain.stdout.startswith("audit chain intact: 12 record(s)")
    assert "audit records checked" not in plain.stderr
    assert shown.stderr.splitlines()[-1] == "audit records checked: 12 of 12 (100 %)"

    listed = anode("ops", "list", "--config", config, "--progress")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1] == "12 operation(s)"
    assert listed.stderr.splitlines()[-1] == "operations listed: 12 of 12 (100 %)"
    assert "operations listed" not in anode("ops", "list", "--config", config).stderr
