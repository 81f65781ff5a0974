"""``signer: {type: cloudflare_secrets}``: a key in Cloudflare Secrets Store, signing in a Worker.

Secrets Store values are write-only over Cloudflare's API; only a Worker bound to the secret reads
it (``env.PAYMASTER_KEY.get()``). So the key never reaches aNode: the Worker in
``deploy/cloudflare/`` signs and speaks the ``remote`` signer's ``anode`` protocol, and this
backend is that protocol with its fields required (``url`` of the Worker, the bearer ``token``,
``key_id`` as the Worker's ``KEY_ID``) and its own name in logs, metrics and ``/health``.
Deployment: ``deploy/cloudflare/README.md``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr

from anode.signers import remote


class Settings(remote.Settings):
    mode: Literal["anode"] = "anode"
    token: SecretStr
    key_id: str = "paymaster"


def build(settings: Settings) -> remote.RemoteSigner:
    return remote.RemoteSigner.connect(settings, backend="cloudflare_secrets")
