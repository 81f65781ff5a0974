"""aNode's own remote key server: ``anode keyserver serve --config FILE``.

It holds paymaster keys (any signer backend: a keystore file, a PKCS#11 HSM, a KMS key…) on a
machine of its own and signs digests for aNode servers that present a bearer token allowed for
that key, appending every signature to a hash-chained audit log. aNode reaches it with
``signer: {type: remote, url, token, key_id}`` (:mod:`anode.signers.remote`); the protocol and
deployment are in docs/keyserver.md.

    config.py   typed settings: keys (id, signer, allowed callers), tokens, audit log, listener
    store.py    the key ring, hashed tokens, the audit log
    app.py      the HTTP API (Starlette): /sign, /health, /keys/{id}, Web3Signer's eth1 routes
    cli.py      ``anode keyserver serve | token | verify-audit``
"""
