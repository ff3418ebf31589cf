"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: absolute paths, drive letters, ``..`` components,
NUL bytes, symlinks, hard links and device files are refused with :class:`ExtractError` naming the
archive and the member. Files are then written one by one with plain ``open()`` calls below the target
folder (never ``extractall``), and each final path is checked again to lie inside it. Callers extract
into a temporary folder and rename it into place, so a failed extraction leaves no half-written dataset.
"""
from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from tqdm import tqdm

from ..errors import NifiError


class ExtractError(NifiError, ValueError):
    """An archive is corrupt, unsupported, or holds a member that would escape the output folder."""


@dataclass(frozen=True)
class Member:
    """One archive entry: its normalised relative path, whether it is a folder, its uncompressed size."""

    name: str          # normalised POSIX path, no leading "./", no trailing "/"
    raw_name: str      # the name as stored in the archive
    is_dir: bool
    size: int


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_member_name(archive: Path, raw: str) -> str:
    """Normalise an archive member name, or raise if it could escape the output folder."""
    if "\x00" in raw:
        raise ExtractError(f"{archive}: member {raw!r} has a NUL byte in its name; refusing to extract")
    name = raw.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise ExtractError(f"{archive}: member '{raw}' has an absolute path; refusing to extract "
                           "(the archive is malformed or malicious)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ExtractError(f"{archive}: member '{raw}' contains '..' and would be written outside the output "
                           "folder; refusing to extract (the archive is malformed or malicious)")
    return "/".join(parts)


def archive_kind(path: Path) -> str:
    """``"zip"`` or ``"tar"`` from the file's content (not its name)."""
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"{path}: archive not found")
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    raise ExtractError(f"{path}: not a valid zip or tar archive (truncated or corrupt download?); "
                       "delete it and download it again")


def list_members(path: str | Path) -> list[Member]:
    """All members of a zip/tar archive, validated (see module docstring); raises on the first bad one."""
    path = Path(path)
    kind = archive_kind(path)
    out: list[Member] = []
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    name = safe_member_name(path, info.filename)
                    mode = (info.external_attr >> 16) & 0xFFFF
                    ftype = stat.S_IFMT(mode)
                    if ftype == stat.S_IFLNK:
                        raise ExtractError(f"{path}: member '{info.filename}' is a symbolic link; refusing to "
                                           "extract archives with links (they can point outside the output folder)")
                    if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
                        raise ExtractError(f"{path}: member '{info.filename}' is not a regular file or folder "
                                           f"(mode {oct(mode)}); refusing to extract")
                    if info.flag_bits & 0x1:
                        raise ExtractError(f"{path}: member '{info.filename}' is encrypted; not supported")
                    is_dir = info.is_dir() or ftype == stat.S_IFDIR
                    if name == "" and not is_dir:
                        raise ExtractError(f"{path}: member {info.filename!r} has an empty name")
                    out.append(Member(name, info.filename, is_dir, 0 if is_dir else info.file_size))
        else:
            with tarfile.open(path, "r:*") as tf:
                for info in tf.getmembers():
                    name = safe_member_name(path, info.name)
                    if info.issym() or info.islnk():
                        raise ExtractError(f"{path}: member '{info.name}' is a {'symbolic' if info.issym() else 'hard'} "
                                           f"link (-> '{info.linkname}'); refusing to extract archives with links")
                    if not (info.isreg() or info.isdir()):
                        raise ExtractError(f"{path}: member '{info.name}' is not a regular file or folder "
                                           "(device, fifo...); refusing to extract")
                    out.append(Member(name, info.name, info.isdir(), 0 if info.isdir() else info.size))
    except ExtractError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise ExtractError(f"{path}: cannot read the archive ({e.__class__.__name__}: {e}); it is probably "
                           "truncated or corrupt: delete it and download it again") from e
    return out


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def extract_members(path: str | Path, dest: str | Path,
                    target_for: Callable[[Member], str | None] | None = None,
                    members: Iterable[Member] | None = None, progress: bool = True) -> int:
    """Extract (selected) members of ``path`` below ``dest``; returns the number of files written.

    ``target_for(member)`` gives the relative output path of a member, or ``None`` to skip it (default:
    the member's own normalised name). Targets are validated like member names.
    """
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    members = list(members) if members is not None else list_members(path)
    jobs: list[tuple[Member, Path]] = []
    for m in members:
        rel = m.name if target_for is None else target_for(m)
        if rel is None:
            continue
        rel = safe_member_name(path, rel)
        target = dest / PurePosixPath(rel) if rel else dest
        if not _inside(dest, target):
            raise ExtractError(f"{path}: member '{m.raw_name}' would be written outside {dest}; refusing to extract")
        jobs.append((m, target))
    need = sum(m.size for m, _ in jobs)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise ExtractError(f"{path}: extracting needs {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB "
                           f"are free under {dest}; free some space or choose another --out")
    written = 0
    kind = archive_kind(path)
    bar = tqdm(total=need, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extract {path.name}",
               disable=not progress, leave=False)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                for m, target in jobs:
                    if m.is_dir:
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if not _inside(dest, target.parent):  # a folder of the path could be a link made by someone else
                        raise ExtractError(f"{path}: '{m.raw_name}' would be written outside {dest}")
                    with zf.open(m.raw_name) as src, open(target, "xb") as dst:
                        _copy(src, dst, bar)
                    written += 1
        else:
            with tarfile.open(path, "r:*") as tf:
                for m, target in jobs:
                    if m.is_dir:
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if not _inside(dest, target.parent):
                        raise ExtractError(f"{path}: '{m.raw_name}' would be written outside {dest}")
                    src = tf.extractfile(m.raw_name)
                    if src is None:
                        raise ExtractError(f"{path}: cannot read member '{m.raw_name}'")
                    with src, open(target, "xb") as dst:
                        _copy(src, dst, bar)
                    written += 1
    except ExtractError:
        raise
    except FileExistsError as e:
        raise ExtractError(f"{path}: two members map to the same file {e.filename}; the archive is malformed") from e
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, RuntimeError) as e:
        # BadZipFile: CRC mismatch; EOFError/OSError: truncated data or a full disk.
        raise ExtractError(f"{path}: extraction failed ({e.__class__.__name__}: {e}); the archive is probably "
                           "truncated or corrupt (delete it and download it again), or the disk is full") from e
    finally:
        bar.close()
    return written


def _copy(src, dst, bar, chunk: int = 1 << 20) -> None:
    while True:
        buf = src.read(chunk)
        if not buf:
            return
        dst.write(buf)
        bar.update(len(buf))


def remove_tree(path: Path) -> None:
    """Remove a folder we created (temporary extraction folder); links inside are removed, not followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


__all__ = ["ExtractError", "Member", "safe_member_name", "archive_kind", "list_members", "extract_members",
           "remove_tree"]
