"""``server.workers`` and ``anode serve --workers``: a number of processes, or ``auto``."""

from __future__ import annotations

import os

import pytest

from anode.config import ServerSettings, worker_count
from anode.errors import ConfigError


def test_auto_is_one_worker_per_usable_core() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert ServerSettings(workers="auto").workers == "auto"


def test_a_number_is_that_many_workers_from_the_command_line_or_the_file() -> None:
    assert worker_count("3") == 3
    assert worker_count(ServerSettings(workers=5).workers) == 5


@pytest.mark.parametrize("value", ["0", "65", "two", "-1", ""])
def test_anything_else_on_the_command_line_is_a_config_error_naming_the_choices(value: str) -> None:
    with pytest.raises(ConfigError, match="1 to 64 or 'auto'"):
        worker_count(value)


@pytest.mark.parametrize("value", [0, 65, "many"])
def test_anything_else_in_the_file_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        ServerSettings(workers=value)
