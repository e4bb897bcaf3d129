"""Where a result came from, recorded in every result file (metrics.json, results.json,
report.html, the export manifest), so that two runs can be told apart a week later.

`collect(config, started)` returns a flat JSON-ready dict:

    git_commit, git_dirty   the checkout xray_flax runs from (None when it is not a git checkout)
    versions                jax, jaxlib, flax, optax, orbax-checkpoint, numpy, xray_flax (None: absent)
    command                 the command line (sys.argv)
    config_sha256           sha256 of the resolved config's canonical JSON (`config_hash`)
    device_kind, device_count, platform, process_count
    host, python
    started_utc, written_utc   ISO 8601 dates, UTC

Nothing here ever raises: a piece that cannot be found is None.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from typing import Any

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "xray_flax")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

log = logging.getLogger(__name__)


def utc_now() -> str:
    """Now as ISO 8601 in UTC, to the second: 2026-12-05T08:45:38Z."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git(directory: str, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: str = _PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout `package_dir` sits in at its top (the repository's
    own xray_flax/, not a copy installed inside some other repository); (None, None) otherwise.
    Dirty: tracked files differ from the commit (untracked files do not count)."""
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if not top or os.path.realpath(top) != os.path.realpath(os.path.dirname(package_dir)):
        return None, None
    commit = _git(top, "rev-parse", "HEAD")
    status = _git(top, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None or commit is None else bool(status))


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None: not installed)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if found.get("jax") is None:
        found["jax"] = getattr(jax, "__version__", None)
    return found


def canonical_json(config: Any) -> str:
    """A config's canonical JSON: sorted keys, no spaces, tuples as lists (as config.json keeps them)."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str, allow_nan=True)


def config_hash(config: Any) -> str:
    """sha256 (hex) of `canonical_json(config)`: equal configs hash equal, whatever their key order."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def device_info() -> dict[str, Any]:
    try:
        devices = jax.devices()
        return {
            "device_kind": devices[0].device_kind,
            "device_count": len(devices),
            "platform": jax.default_backend(),
            "process_count": jax.process_count(),
        }
    except Exception as error:  # noqa: BLE001 - provenance never fails a run
        log.debug("no device information: %s", error)
        return {"device_kind": None, "device_count": None, "platform": None, "process_count": None}


def collect(config: Any = None, started: str | None = None) -> dict[str, Any]:
    """The provenance of a result written now; `started` (utc_now() at the job's start) if known."""
    try:
        commit, dirty = git_state()
    except Exception:  # noqa: BLE001 - provenance never fails a run
        commit, dirty = None, None
    try:
        digest = config_hash(config) if config is not None else None
    except (TypeError, ValueError):
        digest = None
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": versions(),
        "command": list(sys.argv),
        "config_sha256": digest,
        **device_info(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "started_utc": started,
        "written_utc": utc_now(),
    }


def rows(record: dict[str, Any]) -> dict[str, str]:
    """`collect`'s record as short labelled lines for a report (report.html)."""
    commit = record.get("git_commit")
    if commit is None:
        code = "not a git checkout"
    else:
        code = commit[:12] + (" (uncommitted changes)" if record.get("git_dirty") else "")
    packages = ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items() if v)
    device = f"{record.get('device_count')} x {record.get('device_kind')} ({record.get('platform')})"
    return {
        "code": code,
        "versions": packages,
        "command": " ".join(record.get("command") or []),
        "config sha256": str(record.get("config_sha256")),
        "device": f"{device} on {record.get('host')}",
        "date (UTC)": str(record.get("written_utc")),
    }
