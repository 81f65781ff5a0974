"""Solidity contracts written for the tests, compiled at test time (``solidity.py``)."""
