"""Helpers of the fault suite: checksummed snapshots, leftover detection and the CLI error contract."""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CliResult:
    rc: int
    out: str
    err: str
    argv: list


def snapshot(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file below ``root`` (hidden ones too), plus every folder
    (value ``"<dir>"``); ``{}`` when ``root`` does not exist. Equal snapshots = nothing changed."""
    root = Path(root)
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# hidden names the project writes on purpose (download completion markers)
ALLOWED_HIDDEN = {".nifi_complete.json"}
# Everything else hidden is a leftover: atomic temporaries (.<name>.XXXXXXXX<suffix>), staging folders
# (.<name>.partial-*, .<name>.old-*), extraction folders (.nifi-extract-*); so are download partials (*.part).


def leftovers(root: Path) -> list[str]:
    """Temporary or staging files/folders below ``root`` (and ``root``'s hidden siblings named after it)."""
    root = Path(root)
    found = []
    if root.exists():
        for p in root.rglob("*"):
            if p.name not in ALLOWED_HIDDEN and (p.name.startswith(".") or p.name.endswith(".part")):
                found.append(str(p))
    if root.parent.exists():
        found += [str(p) for p in root.parent.iterdir() if p.name.startswith(f".{root.name}.")]
    return sorted(found)


def error_line(res: CliResult, cmd: str) -> str:
    lines = [ln for ln in res.err.splitlines() if ln.startswith(f"nifi {cmd}: error: ")]
    assert lines, f"no 'nifi {cmd}: error:' line in stderr:\n{res.err[-3000:]}"
    return lines[-1]


def assert_cli_error(res: CliResult, cmd: str, *needles: str, rc: int = 2) -> str:
    """Exit code ``rc`` (2: a NifiError), one ``nifi <cmd>: error: ...`` line, no traceback, and every
    needle (file names, the problem; case-insensitive) in the error message. Returns the message."""
    assert res.rc == rc, f"nifi {' '.join(map(str, res.argv))}: exit code {res.rc}, expected {rc}\n{res.err[-3000:]}"
    assert "Traceback" not in res.err, res.err[-3000:]
    msg = res.err[res.err.index(error_line(res, cmd)):]
    for n in needles:
        assert str(n).lower() in msg.lower(), f"error message does not name {n!r}:\n{msg}"
    if os.environ.get("NIFI_FAULTS_LOG"):  # collect what users would see (docs/reliability.md)
        with open(os.environ["NIFI_FAULTS_LOG"], "a") as f:
            f.write(msg.strip() + "\n")
    return msg


def copytree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
