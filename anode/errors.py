"""The one error tree of aNode.

    AnodeError                         every error aNode raises on purpose
    ├── InvalidRequest (ValueError)    the caller sent something malformed     -32602 / 400
    │   ├── UnsupportedChain           chainId not served                      -32602 / 400
    │   └── UnsupportedEntryPoint      entryPoint not served on that chain     -32602 / 400
    ├── MethodNotFound                 unknown JSON-RPC method                 -32601 / 404
    ├── ModuleNotConfigured            endpoint of a module not configured     -32601 / 404
    ├── Unauthorized                   missing or wrong API key                -32001 / 401
    ├── Forbidden                      valid key, not allowed (admin only)     -32001 / 403
    ├── SponsorshipRefused             aNode will not pay for this operation   -32501 / 403
    │   └── ConfirmationRequired       the user must confirm (security filter) -32501 / 403
    ├── UpstreamRejected               the bundler or node refused the op      -32500 / 422
    ├── ServiceUnavailable             a dependency is down (node, store, ...) -32603 / 503
    │   ├── ChainUnavailable
    │   ├── BundlerUnavailable
    │   ├── SignerUnavailable
    │   └── StoreUnavailable
    └── ConfigError                    bad settings; raised at start-up only

Each error carries a stable ``code`` string, a ``message`` that says what to fix, and optional
``data`` (JSON-serialisable). The mapping to HTTP and JSON-RPC lives in ``anode/api/errors.py``
and nowhere else; the numbers above are the class attributes it reads.
"""

from __future__ import annotations

from typing import Any, ClassVar


class AnodeError(Exception):
    """Root of every error aNode raises on purpose."""

    code: str = "ANODE_ERROR"
    rpc_code: ClassVar[int] = -32603
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, data: dict[str, Any] | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code  # a stable, more specific code (``ANODE_001_SBT_NOT_FOUND``)


class InvalidRequest(AnodeError, ValueError):
    code = "ANODE_INVALID_PARAMS"
    rpc_code = -32602
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, data: dict[str, Any] | None = None):
        merged = dict(data or {})
        if field is not None:
            merged["field"] = field
        super().__init__(message, data=merged or None)
        self.field = field


class UnsupportedChain(InvalidRequest):
    code = "ANODE_UNSUPPORTED_CHAIN"


class UnsupportedEntryPoint(InvalidRequest):
    code = "ANODE_UNSUPPORTED_ENTRYPOINT"


class MethodNotFound(AnodeError):
    code = "ANODE_METHOD_NOT_FOUND"
    rpc_code = -32601
    http_status = 404


class ModuleNotConfigured(AnodeError):
    """An endpoint whose pipeline module is not configured (or is disabled)."""

    code = "ANODE_MODULE_NOT_CONFIGURED"
    rpc_code = -32601
    http_status = 404


class Unauthorized(AnodeError):
    code = "ANODE_UNAUTHORIZED"
    rpc_code = -32001
    http_status = 401


class SponsorshipRefused(AnodeError):
    code = "ANODE_SPONSORSHIP_REFUSED"
    rpc_code = -32501
    http_status = 403


class ConfirmationRequired(SponsorshipRefused):
    """The security filter wants the user to confirm; ``data`` carries the token and the warning."""

    code = "ANODE_021_CONFIRMATION_REQUIRED"


class Forbidden(AnodeError):
    """A valid key without the right: e.g. a project key calling an admin endpoint."""

    code = "ANODE_FORBIDDEN"
    rpc_code = -32001
    http_status = 403


class UpstreamRejected(AnodeError):
    code = "ANODE_UPSTREAM_REJECTED"
    rpc_code = -32500
    http_status = 422


class ServiceUnavailable(AnodeError):
    code = "ANODE_UNAVAILABLE"
    rpc_code = -32603
    http_status = 503


class ChainUnavailable(ServiceUnavailable):
    code = "ANODE_CHAIN_UNAVAILABLE"


class BundlerUnavailable(ServiceUnavailable):
    code = "ANODE_BUNDLER_UNAVAILABLE"


class SignerUnavailable(ServiceUnavailable):
    code = "ANODE_SIGNER_UNAVAILABLE"


class StoreUnavailable(ServiceUnavailable):
    code = "ANODE_STORE_UNAVAILABLE"


class ConfigError(AnodeError):
    code = "ANODE_CONFIG_ERROR"
