// An unmodified ERC-7677 client (viem's createPaymasterClient + createBundlerClient) against aNode.
//
//   node tests/js/viem_sponsor.mjs '{"rpcUrl": ..., "bundlerUrl": ..., "paymasterUrl": ...,
//     "entryPoint": "0x…", "entryPointVersion": "0.6" | "0.7" | "0.8", "factory": "0x…",
//     "ownerKey": "0x…", "salt": 50000}'
//
// A counterfactual eth-infinitism SimpleAccount (built with viem's own `toSmartAccount`, since
// permissionless.js cannot be installed next to the pinned viem: its optional peer `ox@^0.11`
// conflicts with viem 2.57.0's ox 0.14) sends one call, `execute(owner, 0, "0x")`, through the
// bundler with aNode as the paymaster. viem does everything else the way it does for any dApp:
// pm_getPaymasterStubData → eth_estimateUserOperationGas → pm_getPaymasterData → sign →
// eth_sendUserOperation → eth_getUserOperationReceipt.
//
// Prints one JSON line: {success, userOpHash, transactionHash, paymaster, sender, actualGasCost,
// paymasterRequests: [{method, params}], paymasterResponses: [...]}. On failure it prints
// {success: false, error} and exits with 1.

import { createPublicClient, defineChain, encodeFunctionData, http, parseAbi } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import {
  createBundlerClient,
  createPaymasterClient,
  entryPoint06Abi,
  entryPoint07Abi,
  entryPoint08Abi,
  getUserOperationHash,
  toSmartAccount,
} from "viem/account-abstraction";

const ENTRY_POINT_ABIS = { "0.6": entryPoint06Abi, "0.7": entryPoint07Abi, "0.8": entryPoint08Abi };

const factoryAbi = parseAbi([
  "function createAccount(address owner, uint256 salt) returns (address)",
  "function getAddress(address owner, uint256 salt) view returns (address)",
]);
const accountAbi = parseAbi(["function execute(address dest, uint256 value, bytes func)"]);

// What permissionless.js uses as SimpleAccount's stub: a well-formed 65-byte ECDSA signature
// (low s), so OpenZeppelin's ECDSA.recover does not revert during gas estimation.
const STUB_SIGNATURE =
  "0xfffffffffffffffffffffffffffffff0000000000000000000000000000000007aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1c";

/** eth-infinitism SimpleAccount for EntryPoint v0.6 / v0.7 / v0.8, through viem's `toSmartAccount`. */
async function toSimpleAccount({ client, owner, factory, salt, entryPoint }) {
  const factoryData = encodeFunctionData({ abi: factoryAbi, functionName: "createAccount", args: [owner.address, salt] });
  return toSmartAccount({
    client,
    entryPoint,
    async getAddress() {
      return client.readContract({ address: factory, abi: factoryAbi, functionName: "getAddress", args: [owner.address, salt] });
    },
    async getFactoryArgs() {
      return { factory, factoryData };
    },
    async encodeCalls(calls) {
      if (calls.length !== 1) throw new Error("this adapter sends exactly one call");
      const [call] = calls;
      return encodeFunctionData({ abi: accountAbi, functionName: "execute", args: [call.to, call.value ?? 0n, call.data ?? "0x"] });
    },
    async getStubSignature() {
      return STUB_SIGNATURE;
    },
    async signMessage({ message }) {
      return owner.signMessage({ message });
    },
    async signTypedData(typedData) {
      return owner.signTypedData(typedData);
    },
    async signUserOperation(parameters) {
      const { chainId = client.chain.id, ...userOperation } = parameters;
      const userOpHash = getUserOperationHash({
        chainId,
        entryPointAddress: entryPoint.address,
        entryPointVersion: entryPoint.version,
        userOperation: { ...userOperation, sender: await this.getAddress() },
      });
      // v0.6 / v0.7 SimpleAccount recover from toEthSignedMessageHash(userOpHash); the v0.8 one
      // from the raw userOpHash, which is already an EIP-712 digest.
      if (entryPoint.version === "0.8") return owner.sign({ hash: userOpHash });
      return owner.signMessage({ message: { raw: userOpHash } });
    },
  });
}

function bigintSafe(value) {
  return JSON.parse(JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v)));
}

async function main() {
  const args = JSON.parse(process.argv[2]);
  const probe = createPublicClient({ transport: http(args.rpcUrl) });
  const chain = defineChain({
    id: await probe.getChainId(),
    name: "anvil",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [args.rpcUrl] } },
  });
  const publicClient = createPublicClient({ chain, transport: http(args.rpcUrl) });

  // Exactly what a dApp writes; the fetch hooks only record what viem sends to aNode.
  const paymasterRequests = [];
  const paymasterResponses = [];
  const paymasterClient = createPaymasterClient({
    transport: http(args.paymasterUrl, {
      async onFetchRequest(request) {
        paymasterRequests.push(await request.clone().json());
      },
      async onFetchResponse(response) {
        paymasterResponses.push(await response.clone().json());
      },
    }),
  });
  const bundlerClient = createBundlerClient({
    chain,
    client: publicClient,
    paymaster: paymasterClient,
    transport: http(args.bundlerUrl),
    pollingInterval: 100,
  });

  const owner = privateKeyToAccount(args.ownerKey);
  const account = await toSimpleAccount({
    client: publicClient,
    owner,
    factory: args.factory,
    salt: BigInt(args.salt),
    entryPoint: { address: args.entryPoint, version: args.entryPointVersion, abi: ENTRY_POINT_ABIS[args.entryPointVersion] },
  });

  const userOpHash = await bundlerClient.sendUserOperation({
    account,
    calls: [{ to: owner.address, value: 0n, data: "0x" }],
  });
  const receipt = await bundlerClient.waitForUserOperationReceipt({ hash: userOpHash, timeout: 30_000 });
  return {
    success: receipt.success,
    userOpHash,
    receiptUserOpHash: receipt.userOpHash,
    transactionHash: receipt.receipt.transactionHash,
    paymaster: receipt.paymaster,
    sender: receipt.sender,
    accountAddress: account.address,
    actualGasCost: receipt.actualGasCost,
    paymasterRequests,
    paymasterResponses,
  };
}

main().then(
  (result) => {
    process.stdout.write(`${JSON.stringify(bigintSafe(result))}\n`);
  },
  (error) => {
    process.stdout.write(`${JSON.stringify({ success: false, error: String(error?.stack ?? error), details: error?.details })}\n`);
    process.exitCode = 1;
  },
);
