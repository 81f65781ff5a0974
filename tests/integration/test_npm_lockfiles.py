"""A fresh checkout stays clean after the README's commands (``./scripts/sandbox`` and
``./scripts/test`` both run ``./scripts/setup``): npm never rewrites a committed lockfile.

Two proofs, each with npm itself against the registry (lockfile resolution only, no packages
downloaded: ``--package-lock-only``), in a copy of the project so the checkout is untouched:

- each committed lockfile is exactly what npm writes for its package.json here, so a plain
  ``npm install`` has nothing to change;
- every ``npm install`` in scripts/setup leaves a lockfile alone even when npm would resolve it
  differently (another registry offering more platforms' optional packages): here, a lockfile
  missing one other-platform entry, which npm would otherwise put back.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = {"root": ROOT, "cloudflare": ROOT / "deploy" / "cloudflare"}
NPM = shutil.which("npm") or "npm"


def copy_project(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(source / name, target / name)
    return target


def npm(args: list[str], cwd: Path) -> None:
    done = subprocess.run([NPM, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"npm {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def setup_npm_installs() -> list[tuple[str, list[str]]]:
    """Every ``npm install`` command line of scripts/setup: (project, arguments after ``npm``)."""
    found = []
    for line in (ROOT / "scripts" / "setup").read_text().splitlines():
        if re.match(r"\s*npm install\b", line):
            args = shlex.split(line.split("#")[0])[1:]
            project = "root"
            if "--prefix" in args:
                at = args.index("--prefix")
                assert args[at + 1] == "deploy/cloudflare", line
                project = "cloudflare"
                del args[at : at + 2]
            found.append((project, args))
    return found


def test_setup_installs_both_projects() -> None:
    assert sorted(project for project, _ in setup_npm_installs()) == ["cloudflare", "root"]


@pytest.mark.parametrize("project", sorted(PROJECTS))
def test_the_committed_lockfile_is_what_npm_writes(project: str, tmp_path: Path) -> None:
    copy = copy_project(PROJECTS[project], tmp_path / project)
    npm(["install", "--package-lock-only", "--no-audit", "--no-fund", "--loglevel=error"], copy)
    assert (copy / "package-lock.json").read_bytes() == (PROJECTS[project] / "package-lock.json").read_bytes()


@pytest.mark.parametrize(("project", "args"), setup_npm_installs(), ids=lambda value: str(value))
def test_the_setup_install_never_rewrites_the_lockfile(project: str, args: list[str], tmp_path: Path) -> None:
    copy = copy_project(PROJECTS[project], tmp_path / project)
    lock_path = copy / "package-lock.json"
    lock = json.loads(lock_path.read_text())
    other_platform = next(
        name
        for name, entry in lock["packages"].items()
        if entry.get("optional") and entry.get("os") and sys.platform not in entry["os"]
    )
    del lock["packages"][other_platform]
    stale = json.dumps(lock, indent=2) + "\n"
    lock_path.write_text(stale)
    npm([*args, "--package-lock-only"], copy)
    assert lock_path.read_text() == stale, f"scripts/setup's `npm {' '.join(args)}` rewrote the lockfile"
