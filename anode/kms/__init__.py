"""The dual-signature KMS: ``anode kms serve --config kms.yaml``, a service of its own.

It holds smart-account owner keys in a custody backend (an HSM over PKCS#11; a development
backend) and signs a UserOperation as the owner only when two signatures agree: the user's
passkey (WebAuthn) and an authorized paymaster's EIP-712 approval. docs/kms.md has the API,
the refusal codes, the EIP-712 types and the threat model.

    config.py    typed settings: custody, store, WebAuthn relying party, chains and factories
    custody/     the custody Protocol and its backends (pkcs11, development)
    store.py     its own tables: accounts, passkeys, challenges, nonces, authorized signers
    audit.py     the hash-chained decision log
    eip712.py    the paymaster's approval and the rotation proof
    passkeys.py  WebAuthn ceremonies (py_webauthn)
    service.py   the decisions, in order
    paymasters.py  the authorized paymaster signers and their rotation
    app.py       the HTTP API
    cli.py       ``anode kms serve | audit verify``
"""
