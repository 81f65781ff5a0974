// The smallest ERC-7677 paymaster signer one would write in Node.js: the yardstick for aNode.
//
//   BASELINE_PRIVATE_KEY=0x… node bench/baseline/server.mjs --port 8090 --chain-id 31337 \
//     --entry-point 0x0000000071727De22E5E9d8BAf0edAc6f37da032 --paymaster 0x…
//
// One process, `node:http`, viem for the hash and the signature; no ledger, no policy, no checks
// beyond the request's shape. It signs for one eth-infinitism VerifyingPaymaster v0.7 exactly as
// aNode does (anode/paymasters/verifying.py): paymasterData is abi.encode(uint48 validUntil,
// uint48 validAfter) followed by the 65-byte signature over the EIP-191 hash of the contract's
// getHash(userOp, validUntil, validAfter); the window runs from now - 60 s to now + 600 s; the
// paymaster gas limits default to 100,000 (verification) and 0 (postOp). Serves
// pm_getPaymasterData, pm_getPaymasterStubData and pm_supportedEntryPoints, on any path, single
// calls and batches. bench/vs_node.py starts it.

import http from "node:http";
import { parseArgs } from "node:util";
import { concat, encodeAbiParameters, getAddress, keccak256, numberToHex, stringToHex } from "viem";
import { privateKeyToAccount, sign } from "viem/accounts";

const { values: options } = parseArgs({
  options: {
    port: { type: "string", default: "8090" },
    host: { type: "string", default: "127.0.0.1" },
    "chain-id": { type: "string", default: "31337" },
    "entry-point": { type: "string", default: "0x0000000071727De22E5E9d8BAf0edAc6f37da032" },
    paymaster: { type: "string" },
    "valid-for": { type: "string", default: "600" },
    "valid-after-slack": { type: "string", default: "60" },
  },
});
if (!options.paymaster || !process.env.BASELINE_PRIVATE_KEY) {
  console.error("usage: BASELINE_PRIVATE_KEY=0x… node server.mjs --paymaster 0x… [--port --chain-id --entry-point]");
  process.exit(2);
}

const account = privateKeyToAccount(process.env.BASELINE_PRIVATE_KEY);
const chainId = BigInt(options["chain-id"]);
const entryPoint = getAddress(options["entry-point"]);
const paymaster = getAddress(options.paymaster);
const validFor = Number(options["valid-for"]);
const validAfterSlack = Number(options["valid-after-slack"]);
const PM_VERIFICATION_GAS = 100_000n;
const PM_POST_OP_GAS = 0n;
const MAX_UINT128 = (1n << 128n) - 1n;

const GET_HASH_TYPES = [
  "address", "uint256", "bytes32", "bytes32", "bytes32", "uint256", "uint256", "bytes32", "uint256", "address",
  "uint48", "uint48",
].map((type) => ({ type }));
const WINDOW_TYPES = [{ type: "uint48" }, { type: "uint48" }];

// stub data carries a well-formed signature by an unrelated key (no zero byte): the contract
// returns SIG_VALIDATION_FAILED for it instead of reverting, so bundlers can estimate gas with it
const STUB_SIGNATURE = await (async () => {
  const privateKey = keccak256(stringToHex("baseline stub signer"));
  for (let counter = 0; ; counter++) {
    const signature = await sign({ hash: keccak256(stringToHex(`baseline stub ${counter}`)), privateKey, to: "hex" });
    if (!/^0x(?:[0-9a-f]{2})*?00/.test(signature)) return signature;
  }
})();

class InvalidParams extends Error {}

function quantity(op, name, fallback) {
  const value = op[name];
  if (value === undefined || value === null) {
    if (fallback !== undefined) return fallback;
    throw new InvalidParams(`userOp.${name} is required`);
  }
  let number;
  try {
    number = BigInt(value);
  } catch {
    throw new InvalidParams(`userOp.${name} must be a hex quantity`);
  }
  if (number < 0n || number > MAX_UINT128) throw new InvalidParams(`userOp.${name} is out of range`);
  return number;
}

function hexBytes(op, name) {
  const value = op[name] ?? "0x";
  if (typeof value !== "string" || !/^0x(?:[0-9a-fA-F]{2})*$/.test(value)) {
    throw new InvalidParams(`userOp.${name} must be 0x-prefixed hex bytes`);
  }
  return value;
}

function word16(value) {
  return numberToHex(value, { size: 16 });
}

/** VerifyingPaymaster v0.7 getHash(userOp, validUntil, validAfter), as the contract computes it. */
function getHash(op, pmVerificationGas, pmPostOpGas, validUntil, validAfter) {
  const initCode = op.factory ? concat([op.factory, hexBytes(op, "factoryData")]) : "0x";
  const accountGasLimits = concat([word16(quantity(op, "verificationGasLimit")), word16(quantity(op, "callGasLimit"))]);
  const gasFees = concat([word16(quantity(op, "maxPriorityFeePerGas")), word16(quantity(op, "maxFeePerGas"))]);
  return keccak256(
    encodeAbiParameters(GET_HASH_TYPES, [
      op.sender,
      BigInt(op.nonce),
      keccak256(initCode),
      keccak256(hexBytes(op, "callData")),
      accountGasLimits,
      (pmVerificationGas << 128n) | pmPostOpGas,
      quantity(op, "preVerificationGas"),
      gasFees,
      chainId,
      paymaster,
      validUntil,
      validAfter,
    ]),
  );
}

async function paymasterFields(params, final) {
  if (!Array.isArray(params) || params.length < 3) {
    throw new InvalidParams("params must be [userOp, entryPoint, chainId, context]");
  }
  const [op, entryPointParam, chainIdParam] = params;
  if (typeof op !== "object" || op === null) throw new InvalidParams("userOp must be a JSON object");
  if (typeof op.sender !== "string" || !/^0x[0-9a-fA-F]{40}$/.test(op.sender)) {
    throw new InvalidParams("userOp.sender must be an address");
  }
  if (!/^0x[0-9a-fA-F]{1,64}$/.test(op.nonce ?? "")) throw new InvalidParams("userOp.nonce must be a hex quantity");
  if (typeof entryPointParam !== "string" || entryPointParam.toLowerCase() !== entryPoint.toLowerCase()) {
    throw new InvalidParams(`entryPoint must be ${entryPoint}`);
  }
  if (!/^0x[0-9a-fA-F]+$/.test(chainIdParam ?? "") || BigInt(chainIdParam) !== chainId) {
    throw new InvalidParams(`chainId must be ${numberToHex(chainId)}`);
  }
  const now = Math.floor(Date.now() / 1000);
  const validUntil = now + validFor;
  const validAfter = Math.max(0, now - validAfterSlack);
  const pmVerificationGas = quantity(op, "paymasterVerificationGasLimit", PM_VERIFICATION_GAS);
  const pmPostOpGas = quantity(op, "paymasterPostOpGasLimit", PM_POST_OP_GAS);
  let signature = STUB_SIGNATURE;
  if (final) {
    const hash = getHash(op, pmVerificationGas, pmPostOpGas, validUntil, validAfter);
    signature = await account.signMessage({ message: { raw: hash } });
  }
  return {
    paymaster,
    paymasterData: concat([encodeAbiParameters(WINDOW_TYPES, [validUntil, validAfter]), signature]),
    paymasterVerificationGasLimit: numberToHex(pmVerificationGas),
    paymasterPostOpGasLimit: numberToHex(pmPostOpGas),
  };
}

const METHODS = {
  pm_supportedEntryPoints: async () => [entryPoint],
  pm_getPaymasterData: (params) => paymasterFields(params, true),
  pm_getPaymasterStubData: async (params) => ({
    ...(await paymasterFields(params, false)),
    sponsor: { name: "baseline" },
    isFinal: false,
  }),
};

async function answer(call) {
  const id = call?.id ?? null;
  const method = METHODS[call?.method];
  if (call?.jsonrpc !== "2.0" || method === undefined) {
    return { jsonrpc: "2.0", id, error: { code: -32601, message: `method not found: ${call?.method}` } };
  }
  try {
    return { jsonrpc: "2.0", id, result: await method(call.params) };
  } catch (error) {
    const code = error instanceof InvalidParams ? -32602 : -32603;
    return { jsonrpc: "2.0", id, error: { code, message: error.message } };
  }
}

const server = http.createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", async () => {
    let reply;
    try {
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      reply = Array.isArray(body) ? await Promise.all(body.map(answer)) : await answer(body);
    } catch {
      reply = { jsonrpc: "2.0", id: null, error: { code: -32700, message: "parse error" } };
    }
    const text = JSON.stringify(reply);
    response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    response.end(text);
  });
});
server.keepAliveTimeout = 65_000;
server.listen(Number(options.port), options.host, () => {
  console.log(`baseline signer ${account.address} for paymaster ${paymaster} on http://${options.host}:${options.port}`);
});
