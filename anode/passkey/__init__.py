"""aNode's side of the dual-signature KMS: the KMS client (failover across its replicas) and the
passkey flow (prepare an operation, co-sign it once the user's passkey approved it)."""
