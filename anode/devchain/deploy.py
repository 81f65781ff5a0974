"""Deploy the ERC-4337 contracts aNode works with onto a dev chain (anvil), idempotently.

What lands where:

- EntryPoints v0.6 / v0.7 / v0.8 through the deterministic CREATE2 deployer with their canonical
  salts (zero for v0.6). The npm 0.6.0 / 0.7.0 / 0.8.0 artifacts all land exactly on the
  canonical addresses that way (checked in the tests). Should an artifact ever hash elsewhere,
  its runtime code (immutables included) is copied onto the canonical address with
  ``anvil_setCode``; ``getUserOpHash`` hashes ``address(this)``, so userOp hashes still match.
- SimpleAccountFactory per version, eth-infinitism VerifyingPaymaster v0.6 / v0.7 (signer =
  the first paymaster signer) and Pimlico SingletonPaymaster V6 / V7 / V8 (owner = manager =
  ``owner``, signers = all paymaster signers), all by CREATE2 with salt 0: the addresses depend
  only on the constructor arguments, so a second run finds them and deploys nothing.
- Each paymaster gets an EntryPoint deposit topped up to ``deposit_wei`` and a stake.

The VerifyingPaymaster makes ``msg.sender`` its owner, which under CREATE2 is the deployer
contract: we impersonate that contract once to hand ownership to ``owner``. Transactions come from
anvil's unlocked accounts; an ``owner`` that is not one of them is impersonated and given ETH.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.artifacts import VERSIONS, has_artifact, load_artifact, singleton_paymaster_init_code
from anode.devchain.rpc import DevRpc, encode_call
from anode.devchain.solidity import dev_contracts

DETERMINISTIC_DEPLOYER = "0x4e59b44847b379578588920ca78fbf26c0b4956c"
CANONICAL_ENTRY_POINTS: dict[str, str] = {
    "v0.6": "0x5FF137D4b0FDCD49DcA30c7CF57E578a026d2789",
    "v0.7": "0x0000000071727De22E5E9d8BAf0edAc6f37da032",
    "v0.8": "0x4337084D9E255Ff0702461CF8895CE9E3b5Ff108",
}
ENTRY_POINT_SALTS: dict[str, bytes] = {
    "v0.6": bytes(32),
    "v0.7": bytes.fromhex("90d8084deab30c2a37c45e8d47f49f2f7965183cb6990a98943ef94940681de3"),
    "v0.8": bytes.fromhex("0a59dbff790c23c976a548690c27297883cc66b4c67024f9117b0238995e35e9"),
}
_ZERO_SALT = bytes(32)
DEFAULT_DEPOSIT_WEI = 100 * 10**18
DEFAULT_STAKE_WEI = 10**18
DEFAULT_UNSTAKE_DELAY_SEC = 86_400


@dataclass(frozen=True)
class Deployment:
    """Checksummed addresses of everything :func:`deploy_sandbox` put on the chain."""

    chain_id: int
    owner: str
    paymaster_signers: tuple[str, ...]
    entry_points: dict[str, str] = field(default_factory=dict)
    factories: dict[str, str] = field(default_factory=dict)
    verifying_paymasters: dict[str, str] = field(default_factory=dict)
    singleton_paymasters: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for ``anode sandbox`` to print or write to a file)."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def create2_address(salt: bytes, init_code: bytes, deployer: str = DETERMINISTIC_DEPLOYER) -> str:
    """Where ``deployer`` puts ``init_code`` with ``salt`` (EIP-1014)."""
    digest = keccak(b"\xff" + bytes.fromhex(deployer[2:]) + salt + keccak(init_code))
    return to_checksum_address(digest[12:])


class _Deployer:
    def __init__(self, rpc: DevRpc, funder: str) -> None:
        self.rpc = rpc
        self.funder = funder
        self._unlocked = {account.lower() for account in rpc.accounts()}

    def create2(self, init_code: bytes, salt: bytes = _ZERO_SALT) -> str:
        address = create2_address(salt, init_code)
        if not self.rpc.get_code(address):
            self.rpc.transact(self.funder, DETERMINISTIC_DEPLOYER, salt + init_code)
            if not self.rpc.get_code(address):
                raise RuntimeError(f"CREATE2 deployment to {address} left no code (constructor reverted?)")
        return address

    def send_as(self, sender: str, to: str, data: bytes, value: int = 0) -> None:
        """Send from ``sender``, impersonating it (and giving it ETH) when anvil does not hold its key."""
        if sender.lower() not in self._unlocked:
            self.rpc.call("anvil_impersonateAccount", sender)
            needed = value + 10**18
            if self.rpc.get_balance(sender) < needed:
                self.rpc.set_balance(sender, needed)
        try:
            self.rpc.transact(sender, to, data, value)
        finally:
            if sender.lower() not in self._unlocked:
                self.rpc.call("anvil_stopImpersonatingAccount", sender)

    def entry_point(self, version: str) -> str:
        artifact = load_artifact(version, "EntryPoint")
        canonical = CANONICAL_ENTRY_POINTS[version]
        if self.rpc.get_code(canonical):
            return canonical
        deployed = self.create2(artifact.bytecode, ENTRY_POINT_SALTS[version])
        if deployed != canonical:
            self.rpc.set_code(canonical, self.rpc.get_code(deployed))
        return canonical

    def fund(self, entry_point: str, paymaster: str, owner: str, deposit_wei: int, stake_wei: int) -> None:
        (balance,) = self.rpc.call_function(entry_point, "balanceOf(address)", ["address"], [paymaster], ["uint256"])
        if balance < deposit_wei:
            self.send_as(
                self.funder,
                entry_point,
                encode_call("depositTo(address)", ["address"], [paymaster]),
                deposit_wei - balance,
            )
        info = self.rpc.call_function(
            entry_point,
            "getDepositInfo(address)",
            ["address"],
            [paymaster],
            ["uint256", "bool", "uint256", "uint32", "uint48"],
        )
        if not info[1] and stake_wei > 0:
            add_stake = encode_call("addStake(uint32)", ["uint32"], [DEFAULT_UNSTAKE_DELAY_SEC])
            self.send_as(owner, paymaster, add_stake, stake_wei)

    def take_ownership(self, contract: str, owner: str) -> None:
        (current,) = self.rpc.call_function(contract, "owner()", return_types=["address"])
        if to_checksum_address(current) != owner:
            transfer = encode_call("transferOwnership(address)", ["address"], [owner])
            self.send_as(to_checksum_address(current), contract, transfer)


def deploy_sandbox(
    rpc_url: str,
    paymaster_signers: Sequence[str],
    owner: str | None = None,
    deposit_wei: int = DEFAULT_DEPOSIT_WEI,
    stake_wei: int = DEFAULT_STAKE_WEI,
) -> Deployment:
    """Deploy (or find) EntryPoints, factories and paymasters; fund and stake the paymasters.

    ``owner`` defaults to anvil's first account; it owns every paymaster (and is the Singleton
    paymasters' manager). ``paymaster_signers[0]`` is the VerifyingPaymasters' signer.
    """
    if not paymaster_signers:
        raise ValueError("deploy_sandbox needs at least one paymaster signer address")
    signers = tuple(to_checksum_address(signer) for signer in paymaster_signers)
    with DevRpc(rpc_url, timeout=60.0) as rpc:
        funder = to_checksum_address(rpc.accounts()[0])
        owner = to_checksum_address(owner) if owner is not None else funder
        deployer = _Deployer(rpc, funder)
        entry_points: dict[str, str] = {}
        factories: dict[str, str] = {}
        verifying_paymasters: dict[str, str] = {}
        singleton_paymasters: dict[str, str] = {}
        for version in VERSIONS:
            entry_point = entry_points[version] = deployer.entry_point(version)
            factory = load_artifact(version, "SimpleAccountFactory")
            factories[version] = deployer.create2(factory.creation_code(["address"], [entry_point]))
            paymasters: list[str] = []
            if has_artifact(version, "VerifyingPaymaster"):
                verifying = load_artifact(version, "VerifyingPaymaster")
                init_code = verifying.creation_code(["address", "address"], [entry_point, signers[0]])
                address = verifying_paymasters[version] = deployer.create2(init_code)
                deployer.take_ownership(address, owner)
                paymasters.append(address)
            init_code = singleton_paymaster_init_code(version, entry_point, owner, owner, signers)
            singleton_paymasters[version] = deployer.create2(init_code)
            paymasters.append(singleton_paymasters[version])
            for paymaster in paymasters:
                deployer.fund(entry_point, paymaster, owner, deposit_wei, stake_wei)
        return Deployment(
            chain_id=rpc.chain_id(),
            owner=owner,
            paymaster_signers=signers,
            entry_points=entry_points,
            factories=factories,
            verifying_paymasters=verifying_paymasters,
            singleton_paymasters=singleton_paymasters,
        )


# -- ERC-20 mode: a test token, its Chainlink-style price feeds and a treasury ----------------------

SANDBOX_TOKEN = ("Test USD", "TUSD", 6)
#: the sandbox's prices: 3000 USD per ETH, 1 USD per TUSD (feeds of 8 decimals, as Chainlink's USD feeds)
SANDBOX_NATIVE_USD = 3000 * 10**8
SANDBOX_TOKEN_USD = 1 * 10**8
FEED_DECIMALS = 8
TREASURY_TOKENS = 1_000_000


@dataclass(frozen=True)
class Erc20Deployment:
    """What :func:`deploy_erc20_sandbox` put on the chain, checksummed."""

    token: str
    symbol: str
    decimals: int
    token_usd_feed: str
    native_usd_feed: str
    #: receives the tokens; holds some and has approved every SingletonPaymaster for them
    treasury: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_erc20_sandbox(rpc_url: str, deployment: Deployment, treasury: str) -> Erc20Deployment:
    """Deploy (or find) the test token and its two price feeds; fund ``treasury`` and approve the paymasters.

    Token and feeds go through CREATE2 with salt 0 (``owner`` of the feeds = ``deployment.owner``),
    so a second run finds them. ``treasury`` must be an account anvil holds the key of (or is
    impersonated): it sends ``approve(paymaster, max)`` to the token for each SingletonPaymaster.
    """
    contracts = dev_contracts()
    name, symbol, decimals = SANDBOX_TOKEN
    treasury = to_checksum_address(treasury)
    with DevRpc(rpc_url, timeout=60.0) as rpc:
        deployer = _Deployer(rpc, to_checksum_address(rpc.accounts()[0]))
        token = deployer.create2(
            contracts["TestToken"].creation_code(["string", "string", "uint8"], [name, symbol, decimals])
        )
        feed_types = ["address", "uint8", "string", "int256"]
        token_feed = deployer.create2(
            contracts["PriceFeed"].creation_code(
                feed_types, [deployment.owner, FEED_DECIMALS, f"{symbol} / USD", SANDBOX_TOKEN_USD]
            )
        )
        native_feed = deployer.create2(
            contracts["PriceFeed"].creation_code(
                feed_types, [deployment.owner, FEED_DECIMALS, "ETH / USD", SANDBOX_NATIVE_USD]
            )
        )
        (held,) = rpc.call_function(token, "balanceOf(address)", ["address"], [treasury], ["uint256"])
        if held < TREASURY_TOKENS * 10**decimals:
            mint = encode_call(
                "mint(address,uint256)", ["address", "uint256"], [treasury, TREASURY_TOKENS * 10**decimals]
            )
            deployer.send_as(treasury, token, mint)
        for paymaster in deployment.singleton_paymasters.values():
            approve = encode_call("approve(address,uint256)", ["address", "uint256"], [paymaster, 2**256 - 1])
            deployer.send_as(treasury, token, approve)
    return Erc20Deployment(
        token=token,
        symbol=symbol,
        decimals=decimals,
        token_usd_feed=token_feed,
        native_usd_feed=native_feed,
        treasury=treasury,
    )
