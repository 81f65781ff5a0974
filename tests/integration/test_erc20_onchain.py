"""ERC-20 mode end to end: a real ``anode serve`` answers ``context.token`` for SingletonPaymaster
V6 / V7 / V8 on anvil, and the real EntryPoint charges the sender in a test token.

- an account holding PointsToken, approving the paymaster in its own callData, then (already
  approved) making a plain call, is sponsored with ``pm_getPaymasterStubData`` +
  ``pm_getPaymasterData``: the treasury gains exactly ``UserOperationSponsored.tokenAmountPaid``,
  which equals the contract's formula with the rate aNode signed, and that rate is the one
  ``pimlico_getTokenQuotes`` quoted; the ledger row records mode, token, rate and maximum;
- refused before signing: too few tokens, no allowance (and an approve below the maximum or a
  later revocation), an unknown token (the answer lists the supported ones), a maximum above
  ``context.maxTokenAmount``; a signed exchange rate changed afterwards gives AA34;
- ``/health`` is degraded while the treasury has not approved the paymaster, ok once it has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.cli import main
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.paymasters.singleton_erc20 import Erc20Terms
from tests.contracts.solidity import compiled
from tests.support.erc20 import (
    approve_from,
    approve_paymaster,
    balance_of,
    expected_charge,
    mint,
    post_op_call,
    sponsored_events,
)
from tests.support.onchain import USER_ADDRESS, UserOp, execute_calldata
from tests.support.server import rpc, running_server
from tests.support.wallet import Client, rpc_op, server_config, with_paymaster

VERSIONS = ["v0.6", "v0.7", "v0.8"]
TOKENS_PER_NATIVE = 3000
MARKUP_PERCENT = 10
#: token base units per 1e18 wei that aNode signs: 3000 PNT per ETH plus 10 %
SIGNED_RATE = TOKENS_PER_NATIVE * 10**18 * (100 + MARKUP_PERCENT) // 100
MINTED = 1000 * 10**18
POST_OP_GAS = 50_000
QUOTE_VALID_SECONDS = 60  # shorter than sponsorship.valid_for_seconds (600)
TREASURY = to_checksum_address(keccak(b"anode erc20 api test treasury")[:20])
UNKNOWN_TOKEN = "0x" + "42" * 20
#: long enough that a cached read is certainly still cached when the test asks again
FUNDS_CACHE_SECONDS = 60


@pytest.fixture(scope="module")
def token(anvil: Anvil) -> str:
    with DevRpc(anvil.rpc_url) as node:
        receipt = node.transact(node.accounts()[0], None, compiled()["PointsToken"].creation_code())
    return to_checksum_address(receipt["contractAddress"])


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("erc20") / "anode.db"


@pytest.fixture(scope="module")
def server(anvil: Anvil, deployment: Deployment, paymaster_key: str, token: str, database: Path) -> Iterator[str]:
    config = server_config(anvil, deployment, paymaster_key, [("singleton", v) for v in VERSIONS])
    for paymaster in config["chains"][0]["paymasters"]:
        paymaster["erc20"] = {
            "treasury": TREASURY,
            "markup_percent": MARKUP_PERCENT,
            "quote_valid_seconds": QUOTE_VALID_SECONDS,
            "post_op_gas": POST_OP_GAS,
            "funds_cache_seconds": FUNDS_CACHE_SECONDS,
            "tokens": [{"address": token, "price": {"source": "fixed", "tokens_per_native": str(TOKENS_PER_NATIVE)}}],
        }
    config["database_url"] = f"sqlite:///{database}"
    config["server"] = {"health_cache_seconds": 0}
    with running_server(config) as url:
        yield url


@pytest.fixture(params=VERSIONS)
def client(request: pytest.FixtureRequest, server: str, anvil: Anvil, deployment: Deployment) -> Client:
    return Client(server, anvil, deployment, request.param)


def _paymaster(client: Client) -> str:
    return client.deployment.singleton_paymasters[client.version]


def _paymaster_config(client: Client, final: dict[str, Any]) -> bytes:
    """The paymaster's own bytes of an answer (v0.6: after the address)."""
    if client.version == "v0.6":
        return bytes.fromhex(final["paymasterAndData"][2:])[20:]
    return bytes.fromhex(final["paymasterData"][2:])


def _signed_terms(client: Client, final: dict[str, Any]) -> Erc20Terms:
    """The terms in the answered paymaster data (the fixed layout of ``singleton_client.py``)."""
    data = _paymaster_config(client, final)
    assert data[0] == 0x03 and data[1] == 0  # ERC-20 mode, allowAllBundlers; no optional field
    return Erc20Terms(
        token=data[14:34],
        post_op_gas=int.from_bytes(data[34:50], "big"),
        exchange_rate=int.from_bytes(data[50:82], "big"),
        paymaster_validation_gas_limit=int.from_bytes(data[82:98], "big"),
        treasury=data[98:118],
    )


def _erc20_op(client: Client, token: str, call_data: bytes, *, minted: int = MINTED) -> UserOp:
    """A new account holding ``minted`` tokens whose operation makes ``call_data``."""
    op = replace(client.new_op(), call_data=call_data)
    if minted:
        mint(client.anvil, token, op.sender, minted)
    return op


def _refusal(client: Client, op: UserOp, context: dict[str, Any], method: str = "pm_getPaymasterData") -> Any:
    params = [rpc_op(op, client.version), client.entry_point, hex(client.deployment.chain_id), context]
    reply = rpc(client.url, method, params)
    assert "error" in reply, reply
    return reply["error"]


def test_an_operation_pays_the_treasury_the_signed_rate_approving_then_approved(client: Client, token: str) -> None:
    paymaster = _paymaster(client)
    quotes = rpc(client.url, "pimlico_getTokenQuotes", [{"tokens": [token]}, client.entry_point, hex(31337)])
    ((quote,),) = [quotes["result"]["quotes"]]
    assert quote == {
        "paymaster": paymaster,
        "token": token,
        "postOpGas": hex(POST_OP_GAS),
        "exchangeRate": hex(SIGNED_RATE),
        "exchangeRateNativeToUsd": "0x0",  # a fixed price knows no USD value
    }
    treasury_before = balance_of(client.anvil, token, TREASURY)
    context = {"token": token}

    # 1. a new account approves the paymaster in its own call, and pays for it in tokens
    op = _erc20_op(client, token, approve_paymaster(token, paymaster))
    stub = client.call("pm_getPaymasterStubData", op, context)
    assert stub["isFinal"] is False
    final = client.call("pm_getPaymasterData", op, context)
    terms = _signed_terms(client, final)
    assert terms.exchange_rate == int(quote["exchangeRate"], 16) == SIGNED_RATE  # quoted = signed
    assert (to_checksum_address(terms.token), to_checksum_address(terms.treasury)) == (token, TREASURY)
    # the stub: the same terms and a constantFee of 1, so a bundler estimating at a fee of 1 wei
    # still sees postOp move tokens from the sender to the treasury; the final data has no fee
    stub_data, final_data = _paymaster_config(client, stub), _paymaster_config(client, final)
    assert stub_data[1] == 0x01 and stub_data[118:134] == (1).to_bytes(16, "big")
    assert stub_data[14:118] == final_data[14:118] and len(stub_data) == len(final_data) + 16  # after the window
    if client.version != "v0.6":  # postOp moves the tokens: its gas limit covers it
        assert int(stub["paymasterPostOpGasLimit"], 16) >= 100_000
        assert final["paymasterPostOpGasLimit"] == stub["paymasterPostOpGasLimit"]
    sponsored = with_paymaster(op, client.version, final)
    outcome = client.submit(sponsored)
    assert outcome.success, outcome.reason
    ((mode, paid_token, paid, rate),) = sponsored_events(client.anvil, outcome.tx_hash, paymaster)
    assert (mode, paid_token, rate) == (1, token, SIGNED_RATE)
    post_op = post_op_call(client.anvil, client.version, outcome.tx_hash, paymaster)
    assert paid == expected_charge(client.version, sponsored, terms, post_op) > 0
    assert balance_of(client.anvil, token, TREASURY) - treasury_before == paid
    assert balance_of(client.anvil, token, op.sender) == MINTED - paid

    # 2. the same account, already approved, makes a plain call
    second = replace(op, nonce=1, factory=None, factory_data=b"", call_data=execute_calldata(USER_ADDRESS, 0, b""))
    final = client.call("pm_getPaymasterData", second, context)
    sponsored = with_paymaster(second, client.version, final)
    outcome = client.submit(sponsored)
    assert outcome.success, outcome.reason
    ((_, _, paid_again, _),) = sponsored_events(client.anvil, outcome.tx_hash, paymaster)
    post_op = post_op_call(client.anvil, client.version, outcome.tx_hash, paymaster)
    assert paid_again == expected_charge(client.version, sponsored, _signed_terms(client, final), post_op) > 0
    assert balance_of(client.anvil, token, TREASURY) - treasury_before == paid + paid_again


def test_the_ledger_records_mode_token_rate_and_maximum(
    client: Client, token: str, database: Path, paymaster_key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)))
    asked = int(time.time())
    final = client.call("pm_getPaymasterData", op, {"token": token})
    valid_until = int.from_bytes(_paymaster_config(client, final)[2:8], "big")
    # an ERC-20 signature outlives no quote: quote_valid_seconds, not sponsorship.valid_for_seconds
    assert asked + QUOTE_VALID_SECONDS <= valid_until <= int(time.time()) + QUOTE_VALID_SECONDS
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text(
                    "SELECT mode, token, exchange_rate, max_token_amount, max_gas_cost_wei FROM sponsorships "
                    "WHERE sender = :sender ORDER BY id DESC"
                ),
                {"sender": op.sender},
            ).one()
    finally:
        engine.dispose()
    mode, recorded_token, rate, maximum, max_gas_cost = row
    assert (mode, recorded_token, int(rate)) == ("erc20", token, SIGNED_RATE)
    terms = _signed_terms(client, final)
    # the most postOp can charge: the op's maximum gas cost plus postOpGas, at maxFeePerGas
    expected = (int(max_gas_cost) + POST_OP_GAS * op.max_fee_per_gas) * terms.exchange_rate // 10**18
    assert int(maximum) == expected

    # the operations view shows them, the amounts as decimal strings (JSON numbers lose digits)
    reply = httpx.get(f"{client.url}/api/v1/operations", params={"sender": op.sender}, timeout=30)
    assert reply.status_code == 200, reply.text
    (listed,) = reply.json()["operations"]
    assert {name: listed[name] for name in ("mode", "token", "exchange_rate", "max_token_amount")} == {
        "mode": "erc20", "token": token, "exchange_rate": str(SIGNED_RATE), "max_token_amount": str(expected),
    }  # fmt: skip
    # and so does `anode ops list`
    config = tmp_path / "config.yaml"
    tree = server_config(client.anvil, client.deployment, paymaster_key, [("singleton", client.version)])
    config.write_text(yaml.safe_dump(tree | {"database_url": f"sqlite:///{database}"}))
    assert main(["ops", "list", "--config", str(config), "--sender", op.sender]) == 0
    header, line, _ = capsys.readouterr().out.splitlines()
    assert header.endswith("userOpHash") and " mode " in header and " max tokens " in header
    assert line.split()[-5:-1] == ["erc20", token, str(expected), str(SIGNED_RATE)], line


def test_a_sender_without_enough_tokens_is_refused_before_signing(client: Client, token: str) -> None:
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)), minted=10**15)
    error = _refusal(client, op, {"token": token})
    assert error["data"]["anodeCode"] == "ANODE_ERC20_TOKEN_BALANCE_LOW"
    assert error["data"]["balance"] == str(10**15)
    assert int(error["data"]["required"]) > 10**15
    assert str(10**15) in error["message"] and error["data"]["required"] in error["message"]


def test_a_refusal_rests_on_a_fresh_read_so_a_topped_up_sender_is_signed_at_once(client: Client, token: str) -> None:
    """Balances and allowances are cached (``funds_cache_seconds``), but only to accept: a sender
    refused on a cached read is read again, so tokens that arrived since count straight away."""
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)), minted=10**15)
    assert _refusal(client, op, {"token": token})["data"]["anodeCode"] == "ANODE_ERC20_TOKEN_BALANCE_LOW"
    mint(client.anvil, token, op.sender, MINTED)  # the refused read of 10**15 is still in the cache
    params = [rpc_op(op, client.version), client.entry_point, hex(client.deployment.chain_id), {"token": token}]
    reply = rpc(client.url, "pm_getPaymasterData", params)
    assert "result" in reply, reply


@pytest.mark.parametrize("calls", ["no-approve", "approve-too-little", "approve-then-revoke"])
def test_a_sender_whose_allowance_does_not_cover_the_maximum_is_refused(client: Client, token: str, calls: str) -> None:
    paymaster = _paymaster(client)
    if calls == "no-approve":
        call_data = execute_calldata(USER_ADDRESS, 0, b"")
    elif calls == "approve-too-little":
        call_data = approve_paymaster(token, paymaster, 1000)
    else:
        approve = encode_call("approve(address,uint256)", ["address", "uint256"], [paymaster, 2**256 - 1])
        revoke = encode_call("approve(address,uint256)", ["address", "uint256"], [paymaster, 0])
        call_data = _batch(client.version, [(token, approve), (token, revoke)])
    op = _erc20_op(client, token, call_data)
    error = _refusal(client, op, {"token": token})
    assert error["data"]["anodeCode"] == "ANODE_ERC20_TOKEN_ALLOWANCE_LOW", error
    assert "approve(" in error["message"] or "lower the paymaster's allowance" in error["message"]


def _batch(version: str, calls: list[tuple[str, bytes]]) -> bytes:
    """SimpleAccount ``executeBatch`` of each version (``pipeline/security/decode.py`` lists them)."""
    targets, datas = [target for target, _ in calls], [data for _, data in calls]
    if version == "v0.6":
        return encode_call("executeBatch(address[],bytes[])", ["address[]", "bytes[]"], [targets, datas])
    if version == "v0.7":
        types = ["address[]", "uint256[]", "bytes[]"]
        return encode_call("executeBatch(address[],uint256[],bytes[])", types, [targets, [], datas])
    batch = [(target, 0, data) for target, data in calls]
    return encode_call("executeBatch((address,uint256,bytes)[])", ["(address,uint256,bytes)[]"], [batch])


def test_an_unknown_token_is_refused_with_the_supported_ones(client: Client, token: str) -> None:
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)))
    for method in ("pm_getPaymasterStubData", "pm_getPaymasterData"):
        error = _refusal(client, op, {"token": UNKNOWN_TOKEN}, method)
        assert error["data"]["anodeCode"] == "ANODE_ERC20_TOKEN_NOT_SUPPORTED"
        assert error["data"]["supported"] == [token]
        assert token in error["message"]
    quotes = rpc(client.url, "pimlico_getTokenQuotes", [{"tokens": [UNKNOWN_TOKEN]}, client.entry_point, "0x7a69"])
    assert quotes["error"]["data"]["supported"] == [token]


def test_a_maximum_above_max_token_amount_is_refused(client: Client, token: str) -> None:
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)))
    error = _refusal(client, op, {"token": token, "maxTokenAmount": hex(10**15)})
    assert error["data"]["anodeCode"] == "ANODE_ERC20_MAX_TOKEN_AMOUNT_EXCEEDED"
    assert error["data"]["maxTokenAmount"] == str(10**15)
    assert int(error["data"]["required"]) > 10**15
    client.call("pm_getPaymasterData", op, {"token": token, "maxTokenAmount": hex(10**21)})  # enough


def test_a_tampered_exchange_rate_is_rejected_with_aa34(client: Client, token: str) -> None:
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)))
    final = client.call("pm_getPaymasterData", op, {"token": token})
    field = "paymasterAndData" if client.version == "v0.6" else "paymasterData"
    data = bytearray.fromhex(final[field][2:])
    rate_end = (20 if client.version == "v0.6" else 0) + 82
    data[rate_end - 1] ^= 0x01  # one base unit more or less per 1e18 wei
    outcome = client.submit(with_paymaster(op, client.version, {**final, field: "0x" + data.hex()}))
    assert not outcome.success
    assert outcome.reason is not None and "AA34" in outcome.reason


def test_rest_erc20_signs_and_refuses_above_max_token_amount(client: Client, token: str) -> None:
    op = _erc20_op(client, token, approve_paymaster(token, _paymaster(client)))
    body: dict[str, Any] = {
        "userOperation": rpc_op(op, client.version),
        "entryPoint": client.entry_point,
        "chainId": client.deployment.chain_id,
        "context": {"type": "erc20", "token": token, "maxTokenAmount": "1000"},
    }
    reply = httpx.post(f"{client.url}/api/v1/paymaster/erc20", json=body)
    assert reply.status_code == 403, reply.text
    error = reply.json()["error"]
    assert error["code"] == "ANODE_ERC20_MAX_TOKEN_AMOUNT_EXCEEDED"
    assert "maxTokenAmount 1000" in error["message"]
    body["context"]["maxTokenAmount"] = str(10**21)
    reply = httpx.post(f"{client.url}/api/v1/paymaster/erc20", json=body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert (result["token"], result["exchangeRate"]) == (token, hex(SIGNED_RATE))
    assert 0 < int(result["maxTokenAmount"]) <= 10**21
    sponsored = with_paymaster(op, client.version, result)
    outcome = client.submit(sponsored)
    assert outcome.success, outcome.reason
    ((_, _, paid, rate),) = sponsored_events(client.anvil, outcome.tx_hash, _paymaster(client))
    assert rate == SIGNED_RATE and 0 < paid <= int(result["maxTokenAmount"])


def test_rest_estimate_prices_the_operation_in_wei_and_in_the_token(client: Client, token: str) -> None:
    op = client.new_op()
    fields = rpc_op(op, client.version)
    del fields["maxFeePerGas"], fields["maxPriorityFeePerGas"]  # suggested from the node's fee history
    body = {"userOperation": fields, "entryPoint": client.entry_point, "chainId": hex(client.deployment.chain_id)}
    plain = httpx.post(f"{client.url}/api/v1/paymaster/estimate", json=body)
    assert plain.status_code == 200, plain.text
    with DevRpc(client.anvil.rpc_url) as node:
        base_fee = int(node.call("eth_feeHistory", "0x1", "latest", [])["baseFeePerGas"][-1], 16)
    gas = plain.json()["gasEstimate"]
    assert int(gas["maxFeePerGas"], 16) >= 2 * base_fee > 0
    assert "tokenAmount" not in plain.json()
    priced = httpx.post(f"{client.url}/api/v1/paymaster/estimate", json={**body, "token": token})
    assert priced.status_code == 200, priced.text
    answer = priced.json()
    gas = answer["gasEstimate"]
    total = int(answer["totalGasCost"])
    fee = int(gas["maxFeePerGas"], 16)
    limit = {name: int(value, 16) for name, value in gas.items()}
    if client.version == "v0.6":  # with a paymaster, v0.6 reserves verificationGasLimit three times
        units = limit["callGasLimit"] + 3 * limit["verificationGasLimit"] + limit["preVerificationGas"]
    else:
        assert limit["paymasterPostOpGasLimit"] >= 100_000  # ERC-20 mode: postOp moves the tokens
        units = sum(limit[name] for name in ("callGasLimit", "verificationGasLimit", "preVerificationGas"))
        units += limit["paymasterVerificationGasLimit"] + limit["paymasterPostOpGasLimit"]
    assert total == units * fee
    assert int(answer["tokenAmount"]) == (total + POST_OP_GAS * fee) * SIGNED_RATE // 10**18
    unknown = httpx.post(f"{client.url}/api/v1/paymaster/estimate", json={**body, "token": UNKNOWN_TOKEN})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "ANODE_ERC20_TOKEN_NOT_SUPPORTED"


def test_health_is_degraded_until_the_treasury_approves_the_paymaster(server: str, anvil: Anvil, token: str) -> None:
    # this test runs last in the module: once approved, the treasury stays approved
    reply = httpx.get(f"{server}/health")
    assert reply.status_code == 503
    problems = reply.json()["erc20"]["problems"]
    assert len(problems) == len(VERSIONS) and all(TREASURY in p and "has not approved" in p for p in problems)
    deployment_paymasters = [p.split("paymaster ")[1].split(" ")[0] for p in problems]
    for paymaster in deployment_paymasters:
        approve_from(anvil, bytes.fromhex(TREASURY[2:]), token, paymaster)
    reply = httpx.get(f"{server}/health")
    assert reply.json()["erc20"] == {"status": "ok", "problems": []}
    assert reply.status_code == 200
