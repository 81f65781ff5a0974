"""Pipeline modules by their configuration name: add a module here, in one line.

Each entry is the module path of a file defining ``Config`` and ``create(config, deps)``.
``paymaster_signer`` is the signing step itself; listing it (enabled) in the pipeline means
"sign when every module passed"; disabling it makes ``/process`` answer the decision only.
"""

from __future__ import annotations

MODULES: dict[str, str] = {}

SIGNING_STEP = "paymaster_signer"
