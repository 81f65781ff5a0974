"""Paymaster contract families: byte layouts and ``getHash`` for each contract aNode signs for."""
