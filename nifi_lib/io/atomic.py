"""Atomic writes: write to a temporary file in the same folder, fsync, then rename over the target.

A crash or a full disk while writing leaves the previous file intact, never a half-written one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import NifiError


DISK_FULL_BYTES = 1 << 20   # a writer's failure with less free space than this is reported as a full disk


def _free_bytes(folder: Path) -> int | None:
    """Bytes available to this user on the file system of ``folder`` (None if unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


class WriteError(NifiError, OSError):
    """A file could not be written (disk full, permissions...); the previous file, if any, is unchanged.

    Also an :class:`OSError` (same ``errno``), so callers that catch ``OSError`` keep working."""


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = e.strerror or str(e) or e.__class__.__name__
    err = WriteError(f"{path}: cannot write ({reason}"
                     + (f", errno {errno.errorcode.get(e.errno, e.errno)}" if e.errno else "")
                     + "); nothing was replaced: the previous file, if any, is unchanged")
    err.errno = e.errno
    return err


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    An ``OSError`` while creating, writing, syncing or renaming the temporary file (e.g. ``ENOSPC``)
    removes it and raises :class:`WriteError` naming ``path``; ``path`` itself is never touched then."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file the usual permissions
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    except Exception as e:
        # Some writers hide ENOSPC behind their own error (torch.save: "RuntimeError: [enforce fail at
        # inline_container.cc] unexpected pos ..."): name the full disk when the file system is full.
        free = _free_bytes(path.parent)
        if free is not None and free < DISK_FULL_BYTES:
            raise _write_error(path, OSError(errno.ENOSPC, f"No space left on device: {free} bytes free; "
                                                           f"the writer said {e.__class__.__name__}: {str(e)[:200]}")) from e
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def atomic_save(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` (e.g. ``lambda p: torch.save(obj, p)``) and rename the result onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
