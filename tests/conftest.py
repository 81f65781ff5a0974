"""Every test that uses an ``anvil`` fixture gets the ``chain`` marker, and is skipped (saying
why) when the npm packages of the local chain are not installed.

A test skips when a real part it needs is missing (PostgreSQL, Redis, SoftHSM2, wrangler, the
npm contracts). On a machine that has them all, as CI does, set ``ANODE_TEST_REQUIRE_ALL=1``
(``.ci/run`` does): every skip then fails, so a proof that did not run cannot pass as green.
That holds for a test that skips (``pytest.skip``, ``skip``/``skipif`` marks, on the test or
the module's ``pytestmark``) and for a whole file skipped while it is collected
(``pytest.importorskip`` or ``pytest.skip(..., allow_module_level=True)`` at module level):
the first fails as a test, the second as a collection error, which stops the run.
``tests/unit/test_require_all.py`` runs these hooks on files that skip each way.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from anode.devchain.artifacts import node_modules_available


def require_all() -> bool:
    return os.environ.get("ANODE_TEST_REQUIRE_ALL", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available = node_modules_available()
    skip = pytest.mark.skip(reason="node_modules missing: run `npm install` in the repository root")
    for item in items:
        if "anvil" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chain)
            if not available:
                item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if require_all() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, and ANODE_TEST_REQUIRE_ALL is set: {_reason(report)}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A file (or class) that skips while it is collected never reaches ``runtest``: fail it here."""
    report = yield
    if require_all() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped as a whole, and ANODE_TEST_REQUIRE_ALL is set: {_reason(report)}"
    return report


def _reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    return report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
