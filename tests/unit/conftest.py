"""Unit tests run without any service: no anvil, no database server, no network."""
