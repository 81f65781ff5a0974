"""The follower's lease in Redis (``watch.lease: redis``, on the server's ``redis_url``).

One key, ``<prefix>follower``, holds the holder's name with a time to live of ``lease_seconds``:
``take`` sets it when it is free (``SET NX PX``) or renews it when this follower holds it, and
``renew`` / ``release`` act only while the key still names this follower (one script each, so
no follower renews or deletes another's lease). Redis failing means no lease: the follower
writes nothing until it is back.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("anode.watch")

_TAKE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

DEFAULT_LEASE_PREFIX = "anode:watch:"


class RedisLease:
    def __init__(self, redis: Redis, holder: str, lease_seconds: float, *, prefix: str = DEFAULT_LEASE_PREFIX) -> None:
        self._redis = redis
        self.holder = holder
        self.key = f"{prefix}follower"
        self._ms = str(max(1, int(lease_seconds * 1000)))
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, holder: str, lease_seconds: float, *, prefix: str = DEFAULT_LEASE_PREFIX) -> RedisLease:
        from redis import Redis

        return cls(
            Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0), holder, lease_seconds, prefix=prefix
        )

    def _call(self, script: Any) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(script(keys=[self.key], args=[self.holder, self._ms]))
        except (RedisError, OSError) as exc:
            log.warning(
                "follower: the Redis lease could not be checked (%s): not working this pass", type(exc).__name__
            )
            return False

    def take(self) -> bool:
        return self._call(self._take)

    def renew(self) -> bool:
        return self._call(self._renew)

    def release(self) -> None:
        self._call(self._release)

    def close(self) -> None:
        self._redis.close()
