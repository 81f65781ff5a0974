"""moto's KMS as a real HTTP server in this process, with its ``MessageType=DIGEST`` handling corrected.

moto (5.2.x, upstream getmoto/moto#10202) ignores ``MessageType=DIGEST`` in ``Sign``: it hashes
the message with SHA-256 and signs that, so a backend tested against it would sign
``sha256(digest)``, which AWS never does. :class:`KmsServer` runs ``ThreadedMotoServer`` in this
process and patches moto's ECDSA key so that a ``Sign`` request with ``MessageType=DIGEST``
signs the given digest prehashed, as AWS KMS does (and, like AWS, refuses a digest whose length
is not the algorithm's). :meth:`KmsServer.uncorrected` switches the fix off for a test that shows
what the uncorrected server does. Requests are served on werkzeug threads, one per request, so
the request's message type travels to the key on a thread-local.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from moto.kms import responses as kms_responses
from moto.kms import utils as kms_utils
from moto.kms.exceptions import ValidationException
from moto.server import ThreadedMotoServer

_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "ECDSA_SHA_256": hashes.SHA256,
    "ECDSA_SHA_384": hashes.SHA384,
    "ECDSA_SHA_512": hashes.SHA512,
}


class KmsServer:
    """``with KmsServer() as kms: kms.endpoint_url`` — moto's KMS on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.correct_digest = True
        self._request = threading.local()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._patches = pytest.MonkeyPatch()
        self.endpoint_url = ""

    def __enter__(self) -> KmsServer:
        self._patch()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._patches.undo()

    @contextmanager
    def uncorrected(self) -> Iterator[None]:
        """moto's own behaviour: ``DIGEST`` requests sign ``sha256(digest)``."""
        self.correct_digest = False
        try:
            yield
        finally:
            self.correct_digest = True

    def _patch(self) -> None:
        original_response = kms_responses.KmsResponse.sign
        original_key = kms_utils.ECDSAPrivateKey.sign
        request = self._request
        server = self

        def response_sign(response: Any) -> str:
            request.digest = server.correct_digest and response._get_param("MessageType") == "DIGEST"
            try:
                return str(original_response(response))
            finally:
                request.digest = False

        def key_sign(key: Any, message: bytes, signing_algorithm: str) -> bytes:
            if not getattr(request, "digest", False):
                return bytes(original_key(key, message, signing_algorithm))
            kms_utils.validate_signing_algorithm(signing_algorithm, key.valid_signing_algorithms)
            algorithm = _HASHES[signing_algorithm]()
            if len(message) != algorithm.digest_size:
                raise ValidationException(f"Digest is invalid length for algorithm {signing_algorithm}.")
            return bytes(key.private_key.sign(message, ec.ECDSA(Prehashed(algorithm))))

        self._patches.setattr(kms_responses.KmsResponse, "sign", response_sign)
        self._patches.setattr(kms_utils.ECDSAPrivateKey, "sign", key_sign)
