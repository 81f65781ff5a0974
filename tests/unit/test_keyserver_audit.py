"""The key server's audit log: a hash chain anchored by its head file (``anode/keyserver/audit.py``).

The chain alone finds a changed, removed or moved record that has a successor; the head file
(records, bytes, the last line's SHA-256, replaced atomically after every append) is what finds a
change to the *last* record or records cut off the end. Start-up refuses a log that does not match
its head, so the next append cannot paper over it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from anode.errors import ConfigError
from anode.keyserver.audit import AuditLog, head_path, read_head, verify_audit
from anode.keyserver.cli import main as keyserver_main

RECORDS = 5


def write_log(directory: Path, records: int = RECORDS) -> Path:
    path = directory / "audit.jsonl"
    audit = AuditLog(path)
    try:
        for number in range(records):
            audit.append(caller="anode-main", key_id="paymaster", digest="0x" + f"{number:02x}" * 32, client=None)
    finally:
        audit.close()
    return path


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_an_intact_log_verifies_and_its_head_names_the_last_record(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    lines = lines_of(path)
    assert verify_audit(path) == RECORDS
    head = read_head(path)
    assert head is not None
    assert head.records == RECORDS and head.size == path.stat().st_size
    assert head.sha256 == hashlib.sha256(lines[-1].encode()).hexdigest()
    assert [json.loads(line)["prev"] for line in lines[1:]] == [
        hashlib.sha256(line.encode()).hexdigest() for line in lines[:-1]
    ]
    assert keyserver_main(["verify-audit", "--log", str(path)]) == 0


def test_a_restarted_key_server_continues_the_chain(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    audit = AuditLog(path)
    try:
        audit.append(caller="anode-main", key_id="paymaster", digest="0x" + "ff" * 32, client=None)
    finally:
        audit.close()
    assert verify_audit(path) == RECORDS + 1


def test_an_empty_log_verifies(tmp_path: Path) -> None:
    path = write_log(tmp_path, records=0)
    assert path.read_bytes() == b""
    assert verify_audit(path) == 0


def tampered(lines: list[str]) -> dict[str, list[str]]:
    last = len(lines) - 1
    swapped_tail = [*lines[:-2], lines[-1], lines[-2]]
    swapped_middle = lines.copy()
    swapped_middle[1], swapped_middle[2] = swapped_middle[2], swapped_middle[1]
    return {
        # the same length: only the head's hash can tell
        "last record changed": [*lines[:last], lines[last].replace('"caller":"anode-main"', '"caller":"anode-evil"')],
        "last record removed": lines[:last],
        "last two records reordered": swapped_tail,
        "middle records reordered": swapped_middle,
        "middle record changed": [lines[0], lines[1].replace("anode-main", "anode-evil"), *lines[2:]],
        "middle record removed": [lines[0], *lines[2:]],
        "every record removed": [],
    }


@pytest.mark.parametrize("case", list(tampered([str(n) for n in range(RECORDS)])))
def test_a_changed_removed_or_reordered_record_is_found(tmp_path: Path, case: str) -> None:
    path = write_log(tmp_path)
    rewrite(path, tampered(lines_of(path))[case])
    with pytest.raises(ValueError, match=r"chain is broken|the head file names|removed from the end"):
        verify_audit(path)
    assert keyserver_main(["verify-audit", "--log", str(path)]) == 2


@pytest.mark.parametrize(
    "case", ["last record changed", "last record removed", "last two records reordered", "every record removed"]
)
def test_start_up_refuses_a_log_changed_at_its_end_and_keeps_the_evidence(tmp_path: Path, case: str) -> None:
    """Continuing would write a new head over the change: the key server stops instead.

    (Start-up reads only the log's end; a change further back is for ``verify-audit`` to find.)
    """
    path = write_log(tmp_path)
    head_before = head_path(path).read_bytes()
    rewrite(path, tampered(lines_of(path))[case])
    log_before = path.read_bytes()
    with pytest.raises(ConfigError, match="does not match its head file"):
        AuditLog(path)
    assert head_path(path).read_bytes() == head_before and path.read_bytes() == log_before


def test_the_last_record_changed_is_reported_as_such(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rewrite(path, tampered(lines_of(path))["last record changed"])
    with pytest.raises(ValueError, match=f"line {RECORDS}: record {RECORDS}, the last one the head file names"):
        verify_audit(path)


def test_records_cut_off_the_end_are_reported_as_such(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    rewrite(path, lines_of(path)[:2])
    with pytest.raises(ValueError, match=f"holds 2 record\\(s\\) but its head file names {RECORDS}"):
        verify_audit(path)


def test_a_log_without_its_head_file_does_not_verify(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    head_path(path).unlink()
    with pytest.raises(ValueError, match=r"no head file audit\.jsonl\.head"):
        verify_audit(path)
    with pytest.raises(ConfigError, match="there is no head file"):
        AuditLog(path)


def test_a_record_written_after_the_head_is_accepted_and_the_head_moves_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between the log write and the head write: the record follows the chain; start-up adopts it."""
    path = write_log(tmp_path)
    previous = lines_of(path)[-1]
    extra = json.dumps({"caller": "anode-main", "prev": hashlib.sha256(previous.encode()).hexdigest()})
    with open(path, "a") as handle:
        handle.write(extra + "\n")
    assert verify_audit(path) == RECORDS + 1  # a live log grows after its head is read
    caplog.set_level(logging.WARNING, logger="anode.keyserver")
    AuditLog(path).close()
    assert "1 record(s) after its head" in caplog.text
    head = read_head(path)
    assert head is not None and head.records == RECORDS + 1
    assert head.sha256 == hashlib.sha256(extra.encode()).hexdigest()


def test_a_record_after_the_head_that_does_not_follow_the_chain_stops_start_up(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    with open(path, "a") as handle:
        handle.write(json.dumps({"caller": "anode-evil", "prev": "0" * 64}) + "\n")
    with pytest.raises(ValueError, match=f"line {RECORDS + 1}: the chain is broken"):
        verify_audit(path)
    with pytest.raises(ConfigError, match="does not follow the chain"):
        AuditLog(path)


def test_a_head_file_that_is_not_a_head_is_reported(tmp_path: Path) -> None:
    path = write_log(tmp_path)
    head_path(path).write_text("{}")
    with pytest.raises(ValueError, match="is not a head record"):
        verify_audit(path)
    with pytest.raises(ConfigError, match="is not a head record"):
        AuditLog(path)
