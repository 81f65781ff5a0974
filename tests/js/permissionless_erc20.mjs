// A wallet that already pays Pimlico's ERC-20 paymaster in tokens, pointed at aNode unchanged.
//
//   node tests/js/permissionless_erc20.mjs '{"rpcUrl": ..., "bundlerUrl": ..., "paymasterUrl": ...,
//     "entryPoint": "0x…", "factory": "0x…", "ownerKey": "0x…", "salt": 60000,
//     "token": "0x…", "funderKey": "0x…", "minted": "0x…"}'
//
// permissionless.js as its docs show it: a SimpleAccount (`toSimpleSmartAccount`, EntryPoint
// 0.7), `createPimlicoClient` on aNode's /api/v1/rpc as the paymaster, `createSmartAccountClient`
// sending through the bundler (Alto), with `paymasterContext: {token}` and
// `prepareUserOperationForErc20Paymaster`: it asks aNode for `pimlico_getTokenQuotes`, estimates
// with a dummy approval, computes the maximum cost in tokens from the quoted exchangeRate and
// postOpGas, and puts `approve(paymaster, that amount)` in front of the call. The counterfactual
// account is first given `minted` tokens (the test token's open `mint`, sent by `funderKey`).
//
// Prints one JSON line: {success, userOpHash, transactionHash, sender, paymaster, approved,
// quote, paymasterRequests: [{method, params}], paymasterResponses: [...]}. On failure it prints
// {success: false, error} and exits with 1.

import { createPublicClient, createWalletClient, decodeFunctionData, erc20Abi, http, parseAbi } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { createSmartAccountClient } from "permissionless";
import { toSimpleSmartAccount } from "permissionless/accounts";
import { createPimlicoClient } from "permissionless/clients/pimlico";
import { prepareUserOperationForErc20Paymaster } from "permissionless/experimental/pimlico";

import { anvilChain, runMain } from "./simple_account.mjs";

const MINT_ABI = parseAbi(["function mint(address to, uint256 amount)"]);

async function main() {
  const args = JSON.parse(process.argv[2]);
  const chain = await anvilChain(args.rpcUrl);
  const publicClient = createPublicClient({ chain, transport: http(args.rpcUrl) });
  const entryPoint = { address: args.entryPoint, version: "0.7" };

  const paymasterRequests = [];
  const paymasterResponses = [];
  const paymaster = createPimlicoClient({
    chain,
    entryPoint,
    transport: http(args.paymasterUrl, {
      async onFetchRequest(request) {
        paymasterRequests.push(await request.clone().json());
      },
      async onFetchResponse(response) {
        paymasterResponses.push(await response.clone().json());
      },
    }),
  });
  const bundler = createPimlicoClient({ chain, entryPoint, transport: http(args.bundlerUrl) });

  const owner = privateKeyToAccount(args.ownerKey);
  const account = await toSimpleSmartAccount({
    client: publicClient,
    owner,
    factoryAddress: args.factory,
    index: BigInt(args.salt),
    entryPoint,
  });

  const funder = createWalletClient({ chain, account: privateKeyToAccount(args.funderKey), transport: http(args.rpcUrl) });
  const mint = await funder.writeContract({
    address: args.token,
    abi: MINT_ABI,
    functionName: "mint",
    args: [account.address, BigInt(args.minted)],
  });
  await publicClient.waitForTransactionReceipt({ hash: mint });

  const client = createSmartAccountClient({
    account,
    chain,
    client: publicClient,
    bundlerTransport: http(args.bundlerUrl),
    paymaster,
    paymasterContext: { token: args.token },
    pollingInterval: 100,
    userOperation: {
      estimateFeesPerGas: async () => (await bundler.getUserOperationGasPrice()).fast,
      prepareUserOperation: prepareUserOperationForErc20Paymaster(paymaster),
    },
  });

  const userOpHash = await client.sendUserOperation({ calls: [{ to: owner.address, value: 0n, data: "0x" }] });
  const receipt = await client.waitForUserOperationReceipt({ hash: userOpHash, timeout: 30_000 });
  const quote = paymasterResponses.find((reply) => reply.result?.quotes)?.result.quotes[0];
  // the calls of the operation aNode signed: permissionless put its approval first
  const signed = paymasterRequests.filter((request) => request.method === "pm_getPaymasterData").at(-1);
  const calls = await account.decodeCalls(signed.params[0].callData);
  const approval = decodeFunctionData({ abi: erc20Abi, data: calls[0].data });
  return {
    success: receipt.success,
    userOpHash,
    transactionHash: receipt.receipt.transactionHash,
    sender: receipt.sender,
    paymaster: receipt.paymaster,
    approved: { token: calls[0].to, functionName: approval.functionName, args: approval.args },
    quote,
    paymasterRequests,
    paymasterResponses,
  };
}

runMain(main);
