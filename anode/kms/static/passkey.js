// The KMS's passkey page: WebAuthn registration and assertion with the KMS's options.
"use strict";

const $ = (id) => document.getElementById(id);

function fromB64url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0)).buffer;
}

function toB64url(buffer) {
  let text = "";
  for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function post(path, body) {
  const reply = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await reply.json();
  if (!reply.ok) throw new Error(`${answer.error.code}: ${answer.error.message}`);
  return answer;
}

function say(text, failed = false) {
  $("status").textContent = text;
  $("status").className = failed ? "error" : "";
}

function descriptors(list) {
  return (list || []).map((c) => ({ ...c, id: fromB64url(c.id) }));
}

async function register() {
  const accountId = $("account").value.trim();
  const { options } = await post("/webauthn/register/options", { accountId });
  const publicKey = {
    ...options,
    challenge: fromB64url(options.challenge),
    user: { ...options.user, id: fromB64url(options.user.id) },
    excludeCredentials: descriptors(options.excludeCredentials),
  };
  const credential = await navigator.credentials.create({ publicKey });
  const response = credential.response;
  const json = {
    id: credential.id,
    rawId: toB64url(credential.rawId),
    type: credential.type,
    response: {
      clientDataJSON: toB64url(response.clientDataJSON),
      attestationObject: toB64url(response.attestationObject),
      transports: response.getTransports ? response.getTransports() : [],
    },
    clientExtensionResults: credential.getClientExtensionResults(),
  };
  const done = await post("/webauthn/register", { accountId, credential: json });
  say(`registered passkey ${done.credentialId} for ${done.accountId}`);
}

// The options aNode's anode_preparePasskeyOperation answered, or the KMS's for the userOpHash typed in.
async function assertionOptions() {
  const prepared = $("options").value.trim();
  if (prepared) return JSON.parse(prepared);
  const accountId = $("account").value.trim();
  const userOpHash = $("userOpHash").value.trim();
  return (await post("/webauthn/authenticate/options", { accountId, userOpHash })).options;
}

async function approve() {
  const options = await assertionOptions();
  const publicKey = {
    ...options,
    challenge: fromB64url(options.challenge),
    allowCredentials: descriptors(options.allowCredentials),
  };
  const assertion = await navigator.credentials.get({ publicKey });
  const response = assertion.response;
  const json = {
    id: assertion.id,
    rawId: toB64url(assertion.rawId),
    type: assertion.type,
    response: {
      clientDataJSON: toB64url(response.clientDataJSON),
      authenticatorData: toB64url(response.authenticatorData),
      signature: toB64url(response.signature),
      userHandle: response.userHandle ? toB64url(response.userHandle) : null,
    },
    clientExtensionResults: assertion.getClientExtensionResults(),
  };
  $("assertion").value = JSON.stringify(json);
  say($("options").value.trim() ? "approved the prepared operation" : `approved ${$("userOpHash").value.trim()}`);
}

function guarded(action) {
  return () => action().catch((error) => say(error.message || String(error), true));
}

const query = new URLSearchParams(location.search);
$("account").value = query.get("accountId") || "";
$("userOpHash").value = query.get("userOpHash") || "";
$("register").addEventListener("click", guarded(register));
$("approve").addEventListener("click", guarded(approve));
