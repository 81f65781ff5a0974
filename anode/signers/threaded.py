"""Backends whose client library blocks (boto3 for AWS KMS, python-pkcs11 for an HSM) sign on a
thread pool of their own, so the event loop never waits on the KMS or the token.

A subclass implements :meth:`ThreadedSigner.sign_blocking` (one signature, on a pool thread) and
:meth:`ThreadedSigner.release` (close its client or session); ``unsafe_sign_hash`` and
``aclose`` come from here: ``aclose`` lets the signatures in flight finish, then releases.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from anode.signers.base import SignedDigest


class ThreadedSigner:
    """The async half of a blocking backend: ``threads`` worker threads named ``thread_name``."""

    def __init__(self, threads: int, thread_name: str) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=thread_name)

    def sign_blocking(self, digest: bytes) -> SignedDigest:
        """Sign the 32-byte ``digest`` as is; runs on a pool thread."""
        raise NotImplementedError

    def release(self) -> None:
        """Close the backend's client or session; no signature is in flight any more."""

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        if len(digest) != 32:
            raise ValueError("unsafe_sign_hash takes a 32-byte digest")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.sign_blocking, digest)

    async def aclose(self) -> None:
        """Let signatures in flight finish, then release the backend."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        self.release()
