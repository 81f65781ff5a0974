"""Errors of the policy engine, as branches of the one tree in ``anode/errors.py``.

    StoreUnavailable → LimitStoreUnavailable   the limits cannot be checked: refuse (-32603 / 503)
    AnodeError       → PolicyNotFound          no policy with that id (404)
    AnodeError       → PolicyExists            POST with an id already taken (409)
    AnodeError       → PolicyEngineOff         the policies API on a server without the engine (409)

Refusals (a limit reached, a condition failed, …) are not errors: the pipeline module answers
them as ``block`` outcomes with the stable codes of ``anode/policy/evaluate.py``.
"""

from __future__ import annotations

from anode.errors import AnodeError, StoreUnavailable


class LimitStoreUnavailable(StoreUnavailable):
    """The store behind spending limits failed: nothing is sponsored until it is back."""

    code = "ANODE_LIMIT_STORE_UNAVAILABLE"


class PolicyNotFound(AnodeError):
    code = "ANODE_POLICY_NOT_FOUND"
    rpc_code = -32602
    http_status = 404


class PolicyExists(AnodeError):
    code = "ANODE_POLICY_EXISTS"
    rpc_code = -32602
    http_status = 409


class PolicyEngineOff(AnodeError):
    """No ``policy_engine`` in the pipeline: a policy written now would be stored and never enforced."""

    code = "ANODE_POLICY_ENGINE_OFF"
    rpc_code = -32601
    http_status = 409

    def __init__(self) -> None:
        super().__init__(
            "no policy engine runs on this server (pipeline.modules: policy_engine is missing or disabled), "
            "so a policy would never be enforced and none is kept: add {name: policy_engine} to "
            "pipeline.modules (or enable it) and restart"
        )
