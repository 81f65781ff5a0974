"""The one error tree of aNode.

    AnodeError                         every error aNode raises on purpose
    ├── InvalidRequest (ValueError)    the caller sent something malformed     -32602 / 400
    │   ├── UnsupportedChain           chainId not served                      -32602 / 400
    │   ├── UnsupportedEntryPoint      entryPoint not served on that chain     -32602 / 400
    │   ├── Erc20NotConfigured         paymaster has no ERC-20 mode            -32602 / 400
    │   ├── TokenNotSupported          token not configured for ERC-20 mode    -32602 / 400
    │   ├── KeyInUrl                   a key in the dashboard's URL            -32602 / 400
    │   └── RelayChainRequired         a relayed eth_* call names no chain     -32602 / 400
    ├── MethodNotFound                 unknown JSON-RPC method                 -32601 / 404
    ├── ModuleNotConfigured            endpoint of a module not configured     -32601 / 404
    ├── Unauthorized                   missing or wrong API key                -32001 / 401
    ├── Forbidden                      valid key, not allowed (admin only)     -32001 / 403
    ├── SponsorshipRefused             aNode will not pay for this operation   -32501 / 403
    │   ├── ConfirmationRequired       the user must confirm (security filter) -32501 / 403
    │   ├── DepositTooLow              the paymaster's deposit cannot pay it   -32501 / 403
    │   ├── TokenBalanceLow            the sender holds too few tokens to pay  -32501 / 403
    │   ├── TokenAllowanceLow          the paymaster may not take enough       -32501 / 403
    │   └── MaxTokenAmountExceeded     the cost passes the caller's maximum    -32501 / 403
    ├── KmsRefused                     the KMS will not sign (anode/kms/)      -32502 / 403
    │   ├── KmsUnauthenticated         the passkey assertion does not verify   -32502 / 401
    │   ├── KmsReplay                  a nonce, challenge or assertion reused  -32502 / 409
    │   ├── KmsStale                   timestamp outside the window, expired   -32502 / 400
    │   └── KmsNotFound                unknown account, passkey or signer      -32502 / 404
    ├── UpstreamRejected               the bundler or node refused the op      -32500 / 422
    │   └── BundlerRejected            a relayed eth_* call: the bundler's own error, code and data as it sent them
    ├── ServiceUnavailable             a dependency is down (node, store, ...) -32603 / 503
    │   ├── PriceUnavailable           no token price aNode may sign on        -32603 / 503
    │   │   ├── PriceStale             a feed's round is older than allowed
    │   │   ├── PriceRoundIncomplete   answeredInRound < roundId (or no round)
    │   │   ├── PriceInvalid           answer <= 0, or a rate out of range
    │   │   └── PriceFeedUnreachable   the feed (or the token) cannot be read
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


class DepositTooLow(SponsorshipRefused):
    """The paymaster's EntryPoint deposit is below the operation's maximum cost: every bundler would
    refuse the operation (AA31), so aNode does not sign it."""

    code = "ANODE_050_DEPOSIT_TOO_LOW"


class Forbidden(AnodeError):
    """A valid key without the right: e.g. a project key calling an admin endpoint."""

    code = "ANODE_FORBIDDEN"
    rpc_code = -32001
    http_status = 403


class UpstreamRejected(AnodeError):
    code = "ANODE_UPSTREAM_REJECTED"
    rpc_code = -32500
    http_status = 422


class RelayChainRequired(InvalidRequest):
    """A relayed bundler call (``eth_*``) on a server with several chains, and no ``?chainId=`` in its URL."""

    code = "ANODE_RELAY_CHAIN_REQUIRED"


class BundlerRejected(UpstreamRejected):
    """The bundler's error for a call aNode relays (``eth_sendUserOperation``, …): answered as it came.

    ``upstream`` is the bundler's JSON-RPC error object; ``api/errors.py`` answers it unchanged
    (its ``code``, ``message`` and ``data``), so a client sees what the bundler said (AA codes,
    -32602, -32500 …) as if it had called the bundler itself.
    """

    code = "ANODE_BUNDLER_REJECTED"

    def __init__(self, upstream: dict[str, Any]) -> None:
        code, message = upstream.get("code"), upstream.get("message")
        self.upstream: dict[str, Any] = {
            "code": code if isinstance(code, int) and not isinstance(code, bool) else -32500,
            "message": message if isinstance(message, str) else "the bundler refused the call",
        }
        if "data" in upstream:
            self.upstream["data"] = upstream["data"]
        super().__init__(f"bundler: {self.upstream['message']}", data={"bundlerError": self.upstream})


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


# -- the dual-signature KMS (anode/kms/): each refusal carries its own ``ANODE_KMS_…`` code ----------


class KmsRefused(AnodeError):
    """The KMS will not sign: the paymaster's signature or authorization is missing or wrong."""

    code = "ANODE_KMS_REFUSED"
    rpc_code = -32502
    http_status = 403


class KmsUnauthenticated(KmsRefused):
    """The user's passkey assertion is missing or does not verify for this account and operation."""

    code = "ANODE_KMS_PASSKEY_INVALID"
    http_status = 401


class KmsReplay(KmsRefused):
    """Something single-use was presented twice: a nonce, a challenge, an assertion's counter."""

    code = "ANODE_KMS_REPLAY"
    http_status = 409


class KmsStale(KmsRefused):
    """A timestamp outside the window, or a challenge past its expiry."""

    code = "ANODE_KMS_STALE"
    http_status = 400


class KmsNotFound(KmsRefused):
    """An account, credential or authorized signer the KMS does not know."""

    code = "ANODE_KMS_NOT_FOUND"
    http_status = 404


class KeyInUrl(InvalidRequest):
    """A key in the dashboard's query string: URLs end up in browser history, proxies and logs."""

    code = "ANODE_KEY_IN_URL"


# -- token prices for ERC-20 mode (anode/pricing/) --------------------------------------------------


class Erc20NotConfigured(InvalidRequest):
    """ERC-20 mode asked of a paymaster that has no ``erc20:`` section (or is not served)."""

    code = "ANODE_ERC20_NOT_CONFIGURED"


class TokenNotSupported(InvalidRequest):
    """A token the paymaster's ``erc20.tokens`` does not list; ``data.supported`` lists those it does."""

    code = "ANODE_ERC20_TOKEN_NOT_SUPPORTED"


class PriceUnavailable(ServiceUnavailable):
    """No price aNode may sign on: the message names the feed (or token) and why."""

    code = "ANODE_PRICE_UNAVAILABLE"


class PriceStale(PriceUnavailable):
    code = "ANODE_PRICE_STALE"


class PriceRoundIncomplete(PriceUnavailable):
    code = "ANODE_PRICE_ROUND_INCOMPLETE"


class PriceInvalid(PriceUnavailable):
    code = "ANODE_PRICE_INVALID"


class PriceFeedUnreachable(PriceUnavailable):
    code = "ANODE_PRICE_FEED_UNREACHABLE"


# -- ERC-20 mode: the sender must be able to pay (anode/sponsorship_erc20.py) --------------------


class TokenBalanceLow(SponsorshipRefused):
    """The sender's token balance is below the most the operation can be charged."""

    code = "ANODE_ERC20_TOKEN_BALANCE_LOW"


class TokenAllowanceLow(SponsorshipRefused):
    """Neither the sender's allowance nor an ``approve`` leading its calls covers the maximum charge."""

    code = "ANODE_ERC20_TOKEN_ALLOWANCE_LOW"


class MaxTokenAmountExceeded(SponsorshipRefused):
    """The most the operation can be charged is above the caller's ``maxTokenAmount``."""

    code = "ANODE_ERC20_MAX_TOKEN_AMOUNT_EXCEEDED"
