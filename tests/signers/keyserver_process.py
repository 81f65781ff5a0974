"""Run ``anode keyserver serve`` as a real process (``python -m anode.keyserver``) for tests.

Keys for it are written as V3 keystores with a cheap KDF (pbkdf2, 2 rounds) so that start-up is
fast; their passwords reach the process through the environment, as in production.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from eth_account import Account

from anode.devchain.anvil import free_port

KEYSERVER = [sys.executable, "-m", "anode.keyserver", "serve"]


def write_keystore(directory: Path, name: str, private_key: str, password: str) -> Path:
    document = Account.encrypt(private_key, password, kdf="pbkdf2", iterations=2)  # type: ignore[arg-type]
    path = directory / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


class KeyserverProcess:
    """One key server on a fixed port; :meth:`restart` brings it back on the same port (new config)."""

    def __init__(
        self, directory: Path, config: dict[str, Any], env: dict[str, str] | None = None, *, tls_ca: Path | None = None
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"{'https' if tls_ca else 'http'}://127.0.0.1:{self.port}"
        self._verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(tls_ca)) if tls_ca else True
        self.env = {**os.environ, **(env or {})}
        self.config_path = directory / "keyserver.yaml"
        self.log_path = directory / "keyserver.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> KeyserverProcess:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [*KEYSERVER, "--config", str(self.config_path), "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the key server exited with {self._process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/upcheck", timeout=1.0, verify=self._verify).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the key server did not start in time:\n{self.log()}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self, config: dict[str, Any]) -> None:
        self.stop()
        self.write_config(config)
        self.start()

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
