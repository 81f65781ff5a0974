"""The key server's audit log: append-only, hash-chained JSON lines, anchored by a head file.

Each record is one JSON line carrying ``prev``, the SHA-256 of the line before it (64 zeros for
the first). A chain alone cannot show that its *last* record was changed or that records were cut
off the end, since nothing follows them; so after every append the log's head — the number of
records, the log's length in bytes and the SHA-256 of the last line — is written to a second file
next to it, ``<audit_log>.head``, atomically (a temporary file renamed over the old one).

:func:`verify_audit` walks the chain and then checks the record the head names: a record changed,
removed or reordered anywhere, the last one included, is found, as is a log shorter than its head.
Records *after* the head's record are accepted: the head is read before the log, so a live log may
have grown in between, and a crash between the two writes leaves one such record. Start-up
(:class:`AuditLog`) checks the same, and refuses to continue a log that does not match its head,
so that the next append cannot write a new head over the evidence.

What it does not do: anyone who can write both files can recompute the whole chain and its head
(there is no secret in it). Ship the log, or only its head, somewhere the key server cannot write
(a log collector, a WORM bucket) when that matters: a head recorded there pins every record up to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from anode.errors import ConfigError

log = logging.getLogger("anode.keyserver")

GENESIS = "0" * 64
#: a record is a few hundred bytes; a "line" longer than this at the head is not one of ours
_MAX_RECORD = 65_536


def head_path(path: Path) -> Path:
    """Where the head of the log at ``path`` is kept: ``<path>.head``."""
    return path.with_name(path.name + ".head")


@dataclass(frozen=True, slots=True)
class Head:
    """The chain's end: ``records`` records, ``size`` bytes, the last line's SHA-256 (``GENESIS`` if none)."""

    records: int
    size: int
    sha256: str

    def dumps(self) -> bytes:
        return orjson.dumps({"records": self.records, "bytes": self.size, "sha256": self.sha256}) + b"\n"


EMPTY = Head(0, 0, GENESIS)


def read_head(path: Path) -> Head | None:
    """The head file of the log at ``path``; ``None`` if there is none, ``ValueError`` if it is not one."""
    try:
        raw = head_path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        fields = orjson.loads(raw)
        head = Head(int(fields["records"]), int(fields["bytes"]), str(fields["sha256"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ValueError(f"head file {head_path(path)} is not a head record") from None
    if head.records < 0 or head.size < 0 or len(head.sha256) != 64 or (head.records == 0) != (head.size == 0):
        raise ValueError(f"head file {head_path(path)} is not a head record")
    return head


def _line_ending_at(handle: BinaryIO, end: int) -> bytes | None:
    """The line (without its newline) whose newline is the byte before ``end``; ``None`` if there is none."""
    start = max(0, end - _MAX_RECORD)
    handle.seek(start)
    chunk = handle.read(end - start)
    if len(chunk) != end - start or not chunk.endswith(b"\n"):
        return None
    cut = chunk.rfind(b"\n", 0, len(chunk) - 1)
    if cut < 0 and start > 0:
        return None
    return chunk[cut + 1 : -1]


def _resume(path: Path) -> Head:
    """The head to continue from: the log checked against its head file; ``ConfigError`` if they disagree."""

    def refuse(reason: str) -> ConfigError:
        return ConfigError(
            f"audit_log: {path} does not match its head file {head_path(path).name} ({reason}). Check it with "
            f"`anode keyserver verify-audit --log {path}`, keep both files as evidence, and point audit_log "
            "at a new file to start a new chain"
        )

    try:
        head = read_head(path)
    except ValueError as exc:
        raise refuse(str(exc)) from None
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        if head is not None and head.records:
            raise refuse(f"the head names {head.records} record(s) but the log is gone") from None
        return EMPTY
    with handle:
        size = os.fstat(handle.fileno()).st_size
        if head is None:
            if size:
                raise refuse("there is no head file, so its last record cannot be checked")
            return EMPTY
        if size < head.size:
            raise refuse(f"the log is {size} bytes, its head says {head.size}: records were removed from the end")
        if head.records:
            last = _line_ending_at(handle, head.size)
            if last is None or hashlib.sha256(last).hexdigest() != head.sha256:
                raise refuse(f"record {head.records}, the last one the head names, was changed or removed")
        if size == head.size:
            return head
        # records written after the head: an append interrupted between the log and the head
        handle.seek(head.size)
        tail = handle.read()
    if not tail.endswith(b"\n"):
        raise refuse("it ends with an incomplete record")
    records, prev = head.records, head.sha256
    for line in tail[:-1].split(b"\n"):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise refuse(f"record {records + 1}, after the head, is not a JSON record") from None
        if not isinstance(record, dict) or record.get("prev") != prev:
            raise refuse(f"record {records + 1}, after the head, does not follow the chain")
        records, prev = records + 1, hashlib.sha256(line).hexdigest()
    added = records - head.records
    log.warning("audit log %s: %d record(s) after its head (an append interrupted); the head moves on", path, added)
    return Head(records, size, prev)


class AuditLog:
    """Append-only, hash-chained JSON lines; a record and the new head are on disk before its signature leaves."""

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = path
        self._head_path = head_path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._head = _resume(path)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"audit_log: cannot open {path} for appending ({exc.strerror})") from None
        self._dir_fd = os.open(path.parent, os.O_RDONLY) if fsync else None
        try:
            self._write_head(self._head)
        except OSError as exc:
            self.close()
            raise ConfigError(f"audit_log: cannot write its head file {self._head_path} ({exc.strerror})") from None

    def append(self, **fields: Any) -> None:
        """Write one record (``time`` and ``prev`` added), then the head; ``OSError`` when the disk refuses."""
        with self._lock:
            head = self._head
            record = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **fields, "prev": head.sha256}
            line = orjson.dumps(record)
            os.write(self._fd, line + b"\n")
            if self._fsync:
                os.fsync(self._fd)
            # with O_APPEND the offset after a write is the end of the file
            self._head = Head(head.records + 1, os.lseek(self._fd, 0, os.SEEK_CUR), hashlib.sha256(line).hexdigest())
            self._write_head(self._head)

    def _write_head(self, head: Head) -> None:
        """Replace the head file atomically: a reader sees the old head or the new one, never a mix."""
        temporary = self._head_path.with_name(self._head_path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, head.dumps())
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self._head_path)
        if self._dir_fd is not None:
            os.fsync(self._dir_fd)

    def close(self) -> None:
        os.close(self._fd)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


def verify_audit(path: Path) -> int:
    """Check an audit log's chain and its head; the number of records, or ``ValueError`` naming the problem."""
    head = read_head(path)  # first: the log only grows after it
    prev, count, offset = GENESIS, 0, 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            offset += len(raw)
            line = raw.rstrip(b"\n")
            if not line:
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ValueError(f"line {number}: not a JSON record") from None
            if not isinstance(record, dict) or record.get("prev") != prev:
                raise ValueError(f"line {number}: the chain is broken (a record before it was changed or removed)")
            prev = hashlib.sha256(line).hexdigest()
            count += 1
            if head is not None and count == head.records and (prev != head.sha256 or offset != head.size):
                raise ValueError(
                    f"line {number}: record {count}, the last one the head file names, was changed "
                    "(it does not match the head)"
                )
    if head is None:
        if count:
            raise ValueError(f"no head file {head_path(path).name}: the last record cannot be checked")
        return 0
    if count < head.records:
        raise ValueError(
            f"the log holds {count} record(s) but its head file names {head.records}: records were removed from the end"
        )
    return count
