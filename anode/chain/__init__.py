"""Clients for the chain's node and for a bundler."""
