// What the viem tests share: an eth-infinitism SimpleAccount (v0.6 / v0.7 / v0.8) through viem's
// own `toSmartAccount`, the EntryPoint ABIs by version, the anvil chain, and the one-line JSON
// result (bigints as hex) each script prints.

import { createPublicClient, defineChain, encodeFunctionData, http, parseAbi } from "viem";
import { entryPoint06Abi, entryPoint07Abi, entryPoint08Abi, getUserOperationHash, toSmartAccount } from "viem/account-abstraction";

export const ENTRY_POINT_ABIS = { "0.6": entryPoint06Abi, "0.7": entryPoint07Abi, "0.8": entryPoint08Abi };

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
export async function toSimpleAccount({ client, owner, factory, salt, entryPoint }) {
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

export function bigintSafe(value) {
  return JSON.parse(JSON.stringify(value, (_, v) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v)));
}

/** The chain behind ``rpcUrl`` (its own chain id), as viem's clients need it. */
export async function anvilChain(rpcUrl) {
  const probe = createPublicClient({ transport: http(rpcUrl) });
  return defineChain({
    id: await probe.getChainId(),
    name: "anvil",
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
}

/** Run ``main`` and print its result as one JSON line, or ``{success: false, error}`` and exit 1. */
export function runMain(main) {
  main().then(
    (result) => {
      process.stdout.write(`${JSON.stringify(bigintSafe(result))}\n`);
    },
    (error) => {
      process.stdout.write(`${JSON.stringify({ success: false, error: String(error?.stack ?? error), details: error?.details })}\n`);
      process.exitCode = 1;
    },
  );
}
