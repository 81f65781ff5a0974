"""What aNode may show of a peer it talks to (a node, a key server, Vault, a KMS), in errors and logs.

A URL shows as ``scheme://host[:port]`` only: provider URLs carry API keys in their path or
query, a key server's its tenant. A peer's own error text is never copied into an error or a log
line: a key server, a proxy in front of it or a fake can echo a token, a key or an API key there.
What an error may carry of a peer's answer is its HTTP status and, where the protocol defines
them, an error code checked against the protocol's list (:func:`known_code`). Client libraries
that log URLs or bodies below WARNING (httpx and httpcore print every URL, botocore every response
body) are held above that by every process's logging set-up (:func:`configure_logging`) and by the
backends that use them (:func:`quiet_loggers`), for a process that sets up its own logging.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from typing import Annotated

import httpx
from pydantic import Field, PlainSerializer

#: the shape of a code aNode names back (``unknown_key``, ``AccessDeniedException``)
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def redacted(url: str) -> str:
    """``scheme://host[:port]`` only: provider URLs carry API keys in their path or query."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


#: a URL setting that may carry credentials (user:password@, a key in its path or query):
#: ``repr`` leaves it out and JSON shows :func:`redacted`; code reads the ``str`` as it is
CredentialUrl = Annotated[str, Field(repr=False), PlainSerializer(redacted, return_type=str, when_used="json")]


def known_code(value: object, codes: Collection[str] | None = None, *, shape: re.Pattern[str] = _CODE) -> str | None:
    """``value`` when it is an error code aNode may name back, else ``None``.

    With ``codes``, only those (the protocol's own list); without, any string of the protocol's
    ``shape`` (for a protocol with an open list of codes, such as AWS's). Messages are never codes.
    """
    if not isinstance(value, str) or not shape.match(value):
        return None
    if codes is not None and value not in codes:
        return None
    return value


#: libraries whose records below WARNING carry a URL (httpx, httpcore) or a response body (botocore)
CHATTY_LOGGERS = ("httpx", "httpcore", "botocore", "boto3", "urllib3")


def configure_logging(level: str) -> None:
    """A process's logging: ``level`` for aNode, the client libraries held at WARNING."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_loggers()


def quiet_loggers(names: Collection[str] = CHATTY_LOGGERS) -> None:
    """Hold each logger in ``names`` at WARNING at least (a level set higher stays)."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # NOTSET included: it would follow the root's DEBUG
            logger.setLevel(logging.WARNING)
