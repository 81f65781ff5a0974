// aNode as a wallet's only endpoint: viem's createBundlerClient AND createPaymasterClient on aNode's URL.
//
//   node tests/js/viem_relay.mjs '{"rpcUrl": ..., "anodeUrl": "http://…/api/v1/rpc?apikey=…",
//     "entryPoint": "0x…", "entryPointVersion": "0.7", "factory": "0x…", "ownerKey": "0x…", "salt": 60000}'
//
// The paymaster methods (pm_*) are aNode's own; the bundler methods (eth_*) pass through aNode to
// the chain's bundler (Alto). Both transports record what viem sent and what came back.
//
// Prints one JSON line: {success, userOpHash, receiptUserOpHash, transactionHash, paymaster,
// sender, chainId, supportedEntryPoints, requests: [{transport, method}], responses: [...]};
// on failure {success: false, error} and exit code 1.

import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createBundlerClient, createPaymasterClient } from "viem/account-abstraction";

import { anvilChain, ENTRY_POINT_ABIS, runMain, toSimpleAccount } from "./simple_account.mjs";

function recorded(url, transport, requests, responses) {
  return http(url, {
    async onFetchRequest(request) {
      const body = await request.clone().json();
      for (const call of Array.isArray(body) ? body : [body]) requests.push({ transport, method: call.method });
    },
    async onFetchResponse(response) {
      responses.push(await response.clone().json());
    },
  });
}

async function main() {
  const args = JSON.parse(process.argv[2]);
  const chain = await anvilChain(args.rpcUrl);
  const publicClient = createPublicClient({ chain, transport: http(args.rpcUrl) });

  const requests = [];
  const responses = [];
  const paymasterClient = createPaymasterClient({ transport: recorded(args.anodeUrl, "paymaster", requests, responses) });
  const bundlerClient = createBundlerClient({
    chain,
    client: publicClient,
    paymaster: paymasterClient,
    transport: recorded(args.anodeUrl, "bundler", requests, responses),
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

  const chainId = await bundlerClient.getChainId();
  const supportedEntryPoints = await bundlerClient.getSupportedEntryPoints();
  const userOpHash = await bundlerClient.sendUserOperation({
    account,
    calls: [{ to: owner.address, value: 0n, data: "0x" }],
  });
  const receipt = await bundlerClient.waitForUserOperationReceipt({ hash: userOpHash, timeout: 30_000 });
  const byHash = await bundlerClient.getUserOperation({ hash: userOpHash });
  return {
    success: receipt.success,
    userOpHash,
    receiptUserOpHash: receipt.userOpHash,
    byHashSender: byHash.userOperation.sender,
    transactionHash: receipt.receipt.transactionHash,
    paymaster: receipt.paymaster,
    sender: receipt.sender,
    chainId,
    supportedEntryPoints,
    requests,
    responses,
  };
}

runMain(main);
