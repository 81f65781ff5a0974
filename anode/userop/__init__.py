"""UserOperation models, packing and hashes for EntryPoint v0.6, v0.7 and v0.8, in one place."""

from anode.userop.hashing import keccak, user_op_hash
from anode.userop.models import UserOperation, UserOperationV06, UserOperationV07, parse_user_op
from anode.userop.versions import CANONICAL_ENTRY_POINTS, EntryPointVersion

__all__ = [
    "CANONICAL_ENTRY_POINTS",
    "EntryPointVersion",
    "UserOperation",
    "UserOperationV06",
    "UserOperationV07",
    "keccak",
    "parse_user_op",
    "user_op_hash",
]
