"""Fixtures for the KMS tests: anvil with the sandbox contracts, a SoftHSM2 token, and the KMS's
app in process (``kms``: PKCS#11 custody, a SQLite file) with the test paymaster authorized."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from anode.config import validate_model
from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment, deploy_sandbox
from anode.kms.app import create_app
from anode.kms.config import KmsSettings
from anode.kms.custody import build_custody
from anode.kms.service import KmsService
from anode.kms.store import KmsStore
from tests.kms.harness import ADMIN_HEADERS, PAYMASTER, kms_config
from tests.signers.softhsm import SoftHsm, softhsm_token
from tests.signers.softhsm import available as softhsm_available
from tests.support.postgres import fresh_pg_database

KEK = "ab" * 32


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def deployment(anvil: Anvil) -> Deployment:
    return deploy_sandbox(anvil.rpc_url, [Account.from_key(DEFAULT_ACCOUNT_KEYS[9]).address])


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    reason = softhsm_available()
    if reason is not None:
        pytest.skip(reason)
    with softhsm_token(tmp_path_factory.mktemp("kms-softhsm")) as hsm:
        yield hsm


@pytest.fixture
def kek(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KMS_TEST_KEK", KEK)
    return KEK


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database("kms") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def kms_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kms.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


Factory = Callable[..., Any]


@pytest.fixture
async def kms_factory(tmp_path: Path, anvil: Anvil, deployment: Deployment, softhsm: SoftHsm) -> AsyncIterator[Factory]:
    """``await make(database_url=…, hsm=…, **settings)`` → (client, service); the test paymaster authorized."""
    made: list[tuple[httpx.AsyncClient, KmsService]] = []

    async def make(database_url: str | None = None, hsm: SoftHsm | None = softhsm, **extra: Any) -> Any:
        url = database_url or f"sqlite:///{tmp_path / 'kms.db'}"
        settings = validate_model(KmsSettings, kms_config(tmp_path, anvil, deployment, url, hsm, **extra))
        store = KmsStore(settings.database_url, nonce_retention_seconds=settings.nonce_retention_seconds)
        store.migrate()
        service = KmsService(settings, store, build_custody(settings))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(service)), base_url="http://kms.test")
        reply = await client.post(
            "/admin/authorized-signers",
            json={"address": PAYMASTER, "name": "test paymaster"},
            headers=ADMIN_HEADERS,
        )
        assert reply.status_code == 200, reply.text
        made.append((client, service))
        return client, service

    yield make
    for client, service in made:
        await client.aclose()
        service.custody.close()
        service.store.close()


@pytest.fixture
async def kms(kms_factory: Factory) -> tuple[httpx.AsyncClient, KmsService]:
    pair: tuple[httpx.AsyncClient, KmsService] = await kms_factory()
    return pair
