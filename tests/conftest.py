"""Every test that uses an ``anvil`` fixture gets the ``chain`` marker, and is skipped (saying
why) when the npm packages of the local chain are not installed."""

from __future__ import annotations

import pytest

from anode.devchain.artifacts import node_modules_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available = node_modules_available()
    skip = pytest.mark.skip(reason="node_modules missing: run `npm install` in the repository root")
    for item in items:
        if "anvil" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chain)
            if not available:
                item.add_marker(skip)
