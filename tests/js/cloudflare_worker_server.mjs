// The Cloudflare signing Worker (deploy/cloudflare/worker.js) under plain Node 20, without workerd.
//
//   WORKER_PAYMASTER_KEY=0x… WORKER_SIGNER_TOKEN=… [WORKER_KEY_ID=…] node tests/js/cloudflare_worker_server.mjs
//
// Serves the Worker's own `fetch(request, env)` on 127.0.0.1 (a free port), with `env` built the
// way the Workers runtime builds it: PAYMASTER_KEY and SIGNER_TOKEN as Secrets Store bindings
// (`{get: async () => value}`), KEY_ID as a plain variable. Prints "listening <port>" when ready.
// The real runtime is exercised by `wrangler dev` (tests/signers/test_cloudflare_worker.py); this
// harness runs the same handler where workerd is not installed.

import http from "node:http";
import worker from "../../deploy/cloudflare/worker.js";

const secret = (name) => ({ get: async () => process.env[name] });
const env = {
  PAYMASTER_KEY: secret("WORKER_PAYMASTER_KEY"),
  SIGNER_TOKEN: secret("WORKER_SIGNER_TOKEN"),
  KEY_ID: process.env.WORKER_KEY_ID,
};
const HOP_BY_HOP = new Set(["connection", "keep-alive", "transfer-encoding", "host", "content-length"]);

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const headers = Object.entries(req.headers).filter(([name]) => !HOP_BY_HOP.has(name));
  const hasBody = req.method !== "GET" && req.method !== "HEAD";
  const request = new Request(`http://127.0.0.1${req.url}`, {
    method: req.method,
    headers,
    body: hasBody ? Buffer.concat(chunks) : undefined,
  });
  const response = await worker.fetch(request, env, {});
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.end(Buffer.from(await response.arrayBuffer()));
});
server.keepAliveTimeout = 30_000;
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
