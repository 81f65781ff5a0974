"""Key custody above the signers: rotating the key a paymaster accepts (``rotation.py``).

It sits above ``signers/``, ``chain/`` and ``store/`` (it reads the paymaster's signer set, sends
the owner's transactions, waits out the ledger's last window and writes the audit log), where
nothing on the request path imports it but the composition root (``wiring.py``) and the CLI.
"""
