"""Sponsorship policies: who gets sponsored, and how much.

    models.py      what a policy is (type, scope, conditions, rate limits, webhook), validated once
    calls.py       the calls an operation makes (SimpleAccount execute/executeBatch), when no one decoded them
    evaluate.py    pure: which policies apply to an operation and what each demands (no I/O, no clock)
    limits/        LimiterStore (base.py): atomic check-and-reserve of every counter of one operation;
                   memory.py, sql.py (SQLite, PostgreSQL), redis.py (one Lua script); the factory
    webhooks.py    custom policies: an HMAC-signed POST that answers {"sponsor": bool} / {"approved": bool}
    repository.py  policies in the database, seeded from settings, cached for the hot path
    engine.py      PolicyEngine: the decision (evaluate → webhooks → reserve), dry runs, status
    errors.py      LimitStoreUnavailable, PolicyNotFound, PolicyExists, PolicyEngineOff

The pipeline module is ``anode/pipeline/modules/policy_engine.py``; how policies combine is
written down in ``docs/policies.md``.
"""
