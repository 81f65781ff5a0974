"""Deploy the contracts the SBT and PNT checks read, and act on them as an issuer would.

    contracts = deploy_check_contracts(rpc_url)
    contracts.mint_sbt("identity", holder)          # holder now holds an identity SBT
    contracts.mint_pnt(holder, 60 * 10**18)
    contracts.stake_for(holder, 30 * 10**18)         # minted to the deployer, staked for holder
    contracts.lock(holder, 10 * 10**18)              # 10 of those 30 move to the locked bucket

Everything is sent from anvil's first account, which issues the SBTs, owns the token and
operates the staking contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eth_utils.address import to_checksum_address

from anode.devchain.rpc import DevRpc, encode_call
from tests.contracts.solidity import compiled

#: the SBT contracts deployed, by type; ``identity_alt`` is a second issuer of the identity type
SBT_TYPES = {"identity": "identity", "identity_alt": "identity", "reputation": "reputation"}


@dataclass
class CheckContracts:
    rpc_url: str
    operator: str
    sbt: dict[str, str] = field(default_factory=dict)
    pnt: str = ""
    staking: str = ""

    def _send(self, to: str, data: bytes) -> dict[str, object]:
        with DevRpc(self.rpc_url) as rpc:
            return rpc.transact(self.operator, to, data)

    def mint_sbt(self, which: str, holder: str) -> int:
        """Mint an SBT of contract ``which`` ("identity", "identity_alt", "reputation"); its token id."""
        receipt = self._send(self.sbt[which], encode_call("mint(address)", ["address"], [holder]))
        logs = receipt["logs"]
        assert isinstance(logs, list)
        return int(logs[0]["topics"][3], 16)

    def revoke_sbt(self, which: str, token_id: int) -> None:
        self._send(self.sbt[which], encode_call("revoke(uint256)", ["uint256"], [token_id]))

    def mint_pnt(self, holder: str, amount: int) -> None:
        self._send(self.pnt, encode_call("mint(address,uint256)", ["address", "uint256"], [holder, amount]))

    def stake_for(self, holder: str, amount: int) -> None:
        """Mint ``amount`` to the operator and stake it for ``holder`` (real token transfers)."""
        self.mint_pnt(self.operator, amount)
        self._send(self.pnt, encode_call("approve(address,uint256)", ["address", "uint256"], [self.staking, amount]))
        self._send(self.staking, encode_call("stakeFor(address,uint256)", ["address", "uint256"], [holder, amount]))

    def lock(self, holder: str, amount: int) -> None:
        self._send(self.staking, encode_call("lock(address,uint256)", ["address", "uint256"], [holder, amount]))


def deploy_check_contracts(rpc_url: str) -> CheckContracts:
    artifacts = compiled()
    with DevRpc(rpc_url) as rpc:
        operator = to_checksum_address(rpc.accounts()[0])
        contracts = CheckContracts(rpc_url, operator)

        def deploy(name: str, types: list[str], args: list[object]) -> str:
            receipt = rpc.transact(operator, None, artifacts[name].creation_code(types, args))
            return to_checksum_address(receipt["contractAddress"])

        for which, kind in SBT_TYPES.items():
            contracts.sbt[which] = deploy(
                "SoulboundToken", ["string", "string", "string"], [f"Test {which} SBT", which[:3].upper(), kind]
            )
        contracts.pnt = deploy("PointsToken", [], [])
        contracts.staking = deploy("PointsStaking", ["address"], [contracts.pnt])
    return contracts
