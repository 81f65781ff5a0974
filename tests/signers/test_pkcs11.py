"""``signer: {type: pkcs11}`` against a SoftHSM2 token (Debian's ``softhsm2``) in a temporary directory.

The token (``tests/signers/softhsm.py``, one per session) is initialised with ``softhsm2-util``;
the signer's key is made inside it by aNode's own ``generate_key`` (``anode keys generate``).
This process and the ``anode serve`` it starts both point at it through ``SOFTHSM2_CONF``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

pkcs11 = pytest.importorskip("pkcs11", reason="python-pkcs11 is not installed")

from eth_utils.crypto import keccak  # noqa: E402
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass  # noqa: E402
from pkcs11.exceptions import AttributeSensitive, PKCS11Error  # noqa: E402
from pkcs11.util.ec import encode_named_curve_parameters  # noqa: E402

from anode.errors import ConfigError  # noqa: E402
from anode.signers.pkcs11 import Settings, generate_key, open_session, open_token  # noqa: E402
from anode.signers.registry import build_signer, signer_settings  # noqa: E402
from tests.signers.softhsm import MODULE, PIN, SO_PIN, TOKEN, SoftHsm  # noqa: E402
from tests.signers.softhsm import available as softhsm_available  # noqa: E402
from tests.support.cli import CHAINS, anode  # noqa: E402
from tests.support.signer_contract import SignerContract, assert_valid  # noqa: E402

KEY = "paymaster-signer"

if (reason := softhsm_available()) is not None:
    pytest.skip(reason, allow_module_level=True)


def settings(**changes: Any) -> Settings:
    fields = {"type": "pkcs11", "module": str(MODULE), "token_label": TOKEN, "pin": PIN, "key_label": KEY}
    return Settings.model_validate({**fields, **changes})


@pytest.fixture(scope="module")
def hsm_key(softhsm: SoftHsm) -> str:
    """The signer's key, generated inside the token by ``generate_key``; its address."""
    return generate_key(settings())


class TestPkcs11Signer(SignerContract):
    backend = "pkcs11"

    @pytest.fixture
    def signer_config(self, softhsm: SoftHsm, hsm_key: str) -> dict[str, Any]:
        return softhsm.signer_config(KEY)

    @pytest.fixture
    def signer_env(self, softhsm: SoftHsm) -> dict[str, str]:
        return softhsm.env

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [PIN, SO_PIN]


def test_the_generated_key_is_secp256k1_sensitive_and_never_leaves_the_token(hsm_key: str) -> None:
    session = open_session(open_token(settings()), settings().pin)
    try:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=KEY)
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.LOCAL] is True  # generated on the token, not imported
        assert private[Attribute.DERIVE] is False
        assert bytes(private[Attribute.EC_PARAMS]) == encode_named_curve_parameters("secp256k1")
        with pytest.raises(AttributeSensitive):
            private[Attribute.VALUE]
        # nor can it be wrapped out under a key of ours
        wrapping = session.generate_key(KeyType.AES, 256, label="wrap-test", store=False)
        with pytest.raises(PKCS11Error):
            wrapping.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
    finally:
        session.close()


async def address_of(configured: Settings) -> str:
    signer = build_signer(configured)
    await signer.aclose()
    return signer.address


async def test_generate_key_refuses_a_label_in_use(hsm_key: str) -> None:
    with pytest.raises(ConfigError, match="already has a key labelled 'paymaster-signer'"):
        generate_key(settings())
    assert await address_of(settings()) == hsm_key  # the key is untouched


async def test_a_second_generated_key_has_its_own_address(hsm_key: str) -> None:
    other = generate_key(settings(key_label="second-key"))
    assert other != hsm_key
    assert await address_of(settings(key_label="second-key")) == other


def test_a_key_on_another_curve_is_refused(hsm_key: str) -> None:
    session = open_session(open_token(settings()), settings().pin, rw=True)
    try:
        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
        )
        params.generate_keypair(store=True, label="p256-key")
    finally:
        session.close()
    with pytest.raises(ConfigError, match="not on secp256k1"):
        build_signer(settings(key_label="p256-key"))


@pytest.mark.parametrize("logged_in", [False, True], ids=["token-checks-it", "already-logged-in"])
async def test_a_wrong_pin_is_a_config_error_that_does_not_echo_it(hsm_key: str, logged_in: bool) -> None:
    """Also when another signer of this process holds the login (the token then checks no PIN)."""
    wrong = "000000111111"
    holder = build_signer(settings()) if logged_in else None
    try:
        with pytest.raises(ConfigError, match="refused the PIN") as caught:
            build_signer(settings(pin=wrong))
        assert wrong not in caught.value.message and PIN not in caught.value.message
        if holder is not None:  # the right PIN still works beside it
            assert await address_of(settings()) == hsm_key
    finally:
        if holder is not None:
            await holder.aclose()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"token_label": "no-such-token"}, "no token labelled 'no-such-token'"),
        ({"key_label": "no-such-key"}, "no EC private key labelled 'no-such-key'"),
        ({"module": "/nonexistent/libpkcs11.so"}, "cannot load the PKCS#11 library"),
    ],
)
def test_configuration_errors_name_what_to_fix(hsm_key: str, changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_signer(signer_settings({**settings().model_dump(), "pin": PIN, **changes}))


def test_settings_never_print_the_pin() -> None:
    configured = settings()
    for text in (repr(configured), str(configured), configured.model_dump_json()):
        assert PIN not in text


async def test_sessions_lost_to_a_library_reset_are_reopened(hsm_key: str, caplog: pytest.LogCaptureFixture) -> None:
    """``C_Finalize``/``C_Initialize`` (what an HSM fail-over looks like to a client) invalidates
    every session and the login; the next signatures reopen sessions, log in again, and succeed."""
    signer = build_signer(settings())
    try:
        pkcs11.lib(str(MODULE)).reinitialize()
        digests = [keccak(bytes([n])) for n in range(6)]
        for digest in digests:
            assert_valid(await signer.unsafe_sign_hash(digest), digest, hsm_key)
        assert "retrying on a new session" in caplog.text
    finally:
        await signer.aclose()


async def test_two_signers_on_one_library_sign_concurrently(hsm_key: str) -> None:
    """python-pkcs11 initialises without locking arguments, so SoftHSM2 takes no locks of its own:
    unserialised concurrent C_Sign calls on two sessions corrupt its heap (seen as a segfault or
    "double free"). Signers sharing a library must therefore share its lock."""
    other_address = generate_key(settings(key_label="concurrent-key"))
    first, second = build_signer(settings()), build_signer(settings(key_label="concurrent-key"))
    try:
        jobs = [(signer, keccak(bytes([n, i]))) for n in range(200) for i, signer in enumerate((first, second))]
        results = await asyncio.gather(*(signer.unsafe_sign_hash(digest) for signer, digest in jobs))
        for (signer, digest), signed in zip(jobs, results, strict=True):
            assert_valid(signed, digest, hsm_key if signer is first else other_address)
    finally:
        await first.aclose()
        await second.aclose()


async def test_anode_keys_generate_makes_the_key_on_the_token_and_it_signs(softhsm: SoftHsm, tmp_path: Path) -> None:
    """The real CLI, in a subprocess, as an operator runs it: ``keys generate`` creates the key on
    the token, ``keys address`` shows it, a second ``generate`` refuses, and the key signs."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"signer": softhsm.signer_config("cli-key"), "chains": CHAINS}))
    made = anode("keys", "generate", "--config", str(config), env=softhsm.env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("created a non-extractable key on the token: ")
    created = made.stdout.strip().rsplit(" ", 1)[-1]
    assert PIN not in made.stdout + made.stderr
    shown = anode("keys", "address", "--config", str(config), env=softhsm.env)
    assert shown.returncode == 0 and shown.stdout.strip() == created
    again = anode("keys", "generate", "--config", str(config), env=softhsm.env)
    assert again.returncode == 2 and "already has a key labelled 'cli-key'" in again.stderr
    signer = build_signer(settings(key_label="cli-key"))
    try:
        digest = keccak(b"signed with the key the CLI made")
        assert_valid(await signer.unsafe_sign_hash(digest), digest, created)
    finally:
        await signer.aclose()
