"""``ANODE_TEST_REQUIRE_ALL`` turns every skip into a failure, however the skip is written.

Each case runs pytest (pytester) on one small file with ``tests/conftest.py`` as its conftest,
once with the variable set (the run fails) and once without (the same file skips: the case is a
real skip, not a broken file).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., pytest.RunResult]
CONFTEST = (Path(__file__).parents[1] / "conftest.py").read_text()

SKIPPING_FILES = {
    "module_importorskip": """
import pytest
pytest.importorskip("a_module_nobody_installed", reason="not installed")

def test_never_runs():
    pass
""",
    "module_level_skip": """
import pytest
pytest.skip("no token here", allow_module_level=True)

def test_never_runs():
    pass
""",
    "module_pytestmark_skip": """
import pytest
pytestmark = pytest.mark.skip(reason="no server here")

def test_never_runs():
    pass
""",
    "module_pytestmark_skipif": """
import pytest
pytestmark = pytest.mark.skipif(True, reason="no server here")

def test_never_runs():
    pass
""",
    "test_skip": """
import pytest

def test_skips():
    pytest.skip("no server here")
""",
    "test_skipif": """
import pytest

@pytest.mark.skipif(True, reason="no server here")
def test_never_runs():
    pass
""",
}


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Run:
    pytester.makeconftest(CONFTEST)

    def run(source: str, *, require_all: bool) -> pytest.RunResult:
        pytester.makepyfile(test_case=source)
        if require_all:
            monkeypatch.setenv("ANODE_TEST_REQUIRE_ALL", "1")
        else:
            monkeypatch.delenv("ANODE_TEST_REQUIRE_ALL", raising=False)
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:asyncio")

    return run


@pytest.mark.parametrize("case", sorted(SKIPPING_FILES))
def test_every_kind_of_skip_fails_the_run_when_all_is_required(run: Run, case: str) -> None:
    source = SKIPPING_FILES[case]

    relaxed = run(source, require_all=False)
    assert relaxed.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED), relaxed.stdout.str()
    assert relaxed.parseoutcomes().get("skipped") == 1, relaxed.stdout.str()

    strict = run(source, require_all=True)
    assert strict.ret != pytest.ExitCode.OK, strict.stdout.str()
    outcomes = strict.parseoutcomes()
    assert "skipped" not in outcomes, strict.stdout.str()
    assert outcomes.get("failed", 0) + outcomes.get("errors", outcomes.get("error", 0)) == 1, outcomes
    assert "ANODE_TEST_REQUIRE_ALL is set" in strict.stdout.str()


def test_an_expected_failure_is_not_a_skip(run: Run) -> None:
    strict = run(
        "import pytest\n\n@pytest.mark.xfail(reason='known')\ndef test_x():\n    assert False\n", require_all=True
    )
    assert strict.ret == pytest.ExitCode.OK and strict.parseoutcomes() == {"xfailed": 1}
