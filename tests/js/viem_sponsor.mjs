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

import { createPublicClient, http } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createBundlerClient, createPaymasterClient } from "viem/account-abstraction";

import { anvilChain, ENTRY_POINT_ABIS, runMain, toSimpleAccount } from "./simple_account.mjs";

async function main() {
  const args = JSON.parse(process.argv[2]);
  const chain = await anvilChain(args.rpcUrl);
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

runMain(main);
