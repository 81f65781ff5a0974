// aNode's remote signer as a Cloudflare Worker: the paymaster key lives in Cloudflare Secrets Store,
// which only a Worker can read, and never leaves Cloudflare. aNode reaches it with
// `signer: {type: cloudflare_secrets, url, token, key_id}` (docs/keyserver.md has the protocol).
//
// Bindings (wrangler.toml):
//   PAYMASTER_KEY  Secrets Store secret: the secp256k1 private key, 64 hex digits (0x optional)
//   SIGNER_TOKEN   the bearer token aNode presents: a Secrets Store secret or a Worker secret
//   KEY_ID         plain variable, the key's name in the protocol (default "paymaster")
//
// Routes, all behind `Authorization: Bearer <SIGNER_TOKEN>`:
//   POST /sign         {algorithm: "secp256k1-ecdsa-digest", data: 0x<32 bytes>, key_id}
//                      → {signature: 0x<r ‖ s ‖ v, 65 bytes, low s, v 27|28>, address, key_id}
//   GET|POST /health   → {status: "ok", keys: [{key_id, address}]}
//   GET /keys/<id>     → {key_id, address}
// The digest is signed exactly as given (no hashing, no prefix): aNode sends the EIP-191 digest
// the paymaster contract recovers from.

import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";

const ALGORITHM = "secp256k1-ecdsa-digest";
const DIGEST = /^0x[0-9a-fA-F]{64}$/;
const KEY = /^(0x)?[0-9a-fA-F]{64}$/;
const encoder = new TextEncoder();

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function unhex(text) {
  const body = text.startsWith("0x") ? text.slice(2) : text;
  const out = new Uint8Array(body.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(body.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** EIP-55 checksummed address of an uncompressed public key. */
function addressOf(publicKey) {
  const lower = hex(keccak_256(publicKey.subarray(1)).subarray(12));
  const hash = hex(keccak_256(encoder.encode(lower)));
  let out = "0x";
  for (let i = 0; i < 40; i++) out += parseInt(hash[i], 16) >= 8 ? lower[i].toUpperCase() : lower[i];
  return out;
}

async function secretValue(binding) {
  if (binding == null) return null;
  if (typeof binding === "string") return binding; // a Worker secret
  return await binding.get(); // a Secrets Store secret
}

// Derived once per key value and isolate; a rotated secret is picked up on the next request.
let cached = { value: null, key: null, address: null };

async function signingKey(env) {
  const value = ((await secretValue(env.PAYMASTER_KEY)) || "").trim();
  if (value !== cached.value) {
    if (!KEY.test(value)) throw new Unavailable("PAYMASTER_KEY is not 64 hex digits");
    const key = unhex(value);
    if (!secp256k1.utils.isValidSecretKey(key)) throw new Unavailable("PAYMASTER_KEY is not a valid secp256k1 key");
    cached = { value, key, address: addressOf(secp256k1.getPublicKey(key, false)) };
  }
  return cached;
}

class Unavailable extends Error {}

function reply(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store", ...headers },
  });
}

function error(status, code, message) {
  const headers = status === 401 ? { "www-authenticate": 'Bearer realm="anode-signer"' } : {};
  return reply(status, { error: { code, message } }, headers);
}

async function sha256(text) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

/** Compare the presented bearer token with SIGNER_TOKEN through their SHA-256 digests, in constant time. */
async function authorised(request, env) {
  const expected = await secretValue(env.SIGNER_TOKEN);
  if (!expected) throw new Unavailable("SIGNER_TOKEN is not configured");
  const [scheme, token] = (request.headers.get("authorization") || "").split(" ", 2);
  if (!scheme || scheme.toLowerCase() !== "bearer" || !token) return false;
  const [a, b] = await Promise.all([sha256(token.trim()), sha256(expected.trim())]);
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

async function sign(request, env, keyId) {
  let body;
  try {
    body = await request.json();
  } catch {
    return error(400, "bad_request", "the body must be a JSON object");
  }
  if (body === null || typeof body !== "object") return error(400, "bad_request", "the body must be a JSON object");
  if (body.algorithm !== ALGORITHM) {
    return error(400, "unsupported_algorithm", `algorithm must be "${ALGORITHM}"`);
  }
  if (typeof body.data !== "string" || !DIGEST.test(body.data)) {
    return error(400, "bad_request", "data must be a 32-byte digest as 0x-prefixed hex");
  }
  if (body.key_id !== keyId) return error(404, "unknown_key", `no key ${JSON.stringify(body.key_id)}`);
  const { key, address } = await signingKey(env);
  const signature = secp256k1.sign(unhex(body.data), key, { prehash: false, lowS: true, format: "recovered" });
  // noble's "recovered" layout is recovery ‖ r ‖ s; Ethereum's is r ‖ s ‖ v with v = 27 + recovery
  const out = new Uint8Array(65);
  out.set(signature.subarray(1), 0);
  out[64] = 27 + signature[0];
  return reply(200, { signature: "0x" + hex(out), address, key_id: keyId });
}

export default {
  async fetch(request, env) {
    const keyId = env.KEY_ID || "paymaster";
    const { pathname } = new URL(request.url);
    try {
      if (!(await authorised(request, env))) {
        return error(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer …)");
      }
      if (pathname === "/sign" && request.method === "POST") return await sign(request, env, keyId);
      if (pathname === "/health" && (request.method === "GET" || request.method === "POST")) {
        const { address } = await signingKey(env);
        return reply(200, { status: "ok", keys: [{ key_id: keyId, address }] });
      }
      if (pathname.startsWith("/keys/") && request.method === "GET") {
        const wanted = decodeURIComponent(pathname.slice("/keys/".length));
        if (wanted !== keyId) return error(404, "unknown_key", `no key ${JSON.stringify(wanted)}`);
        const { address } = await signingKey(env);
        return reply(200, { key_id: keyId, address });
      }
      return error(404, "not_found", `no route ${request.method} ${pathname}`);
    } catch (exc) {
      if (exc instanceof Unavailable) return error(503, "signer_unavailable", exc.message);
      return error(503, "signer_unavailable", "the signer failed"); // never echo internals (or the key)
    }
  },
};
