"""Resumable, verified downloads of the benchmark archives and their extraction into place.

``nifi download --dataset mipnerf360|tanks_temples|deepblending|all --out data/benchmarks`` fetches the
archives of :mod:`nifi_lib.data.registry` into ``<out>/_archives/`` and installs each scene as
``<out>/<dataset>/<scene>/`` (``images*/``, ``sparse/0/``...).

* Downloads go to ``<archive>.part`` and resume with an HTTP ``Range`` request on the next attempt or the
  next run; a server that ignores ``Range`` (answers 200) restarts the file from zero.
* Transient failures (connection errors, time-outs, HTTP 408/429/5xx, a connection closed mid-file) are
  retried with exponential back-off: ``backoff * 2**k`` seconds, at most ``max_backoff``, at most
  ``retries`` consecutive attempts without progress.
* The finished file is checked against the expected size and SHA-256 (when known, else the size the
  server announced), renamed into place, and a completion file ``<archive>.complete.json`` is written
  last. Scenes get ``<scene>/.nifi_complete.json``. Re-runs skip anything complete without touching the
  network.
* An archive placed by hand at ``<out>/_archives/<name>`` (downloaded on another machine) is verified
  and used as is; ``--mirror URL`` (or a local folder) replaces the base URL: ``<mirror>/<file name>``.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..io.hashing import sha256_file
from . import registry
from .extract import ExtractError, Member, extract_members, list_members, remove_tree
from .registry import Archive, ScenePlacement

ARCHIVES_DIRNAME = "_archives"
SCENE_MARKER = ".nifi_complete.json"
USER_AGENT = "nifi-download/0.1 (+https://arxiv.org/abs/2602.04549)"
RETRY_HTTP_CODES = (408, 425, 429, 500, 502, 503, 504)


class DownloadError(NifiError, RuntimeError):
    """A download failed for good (no network, HTTP error, size or checksum mismatch)."""


class _Transient(Exception):
    """An attempt failed in a way worth retrying."""


def _sleep(seconds: float) -> None:  # patched by tests
    time.sleep(seconds)


def marker_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".complete.json")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def normalize_url(url_or_dir: str) -> str:
    """A URL as is; an existing local path becomes a ``file://`` URL (for ``--mirror /some/folder``)."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url_or_dir):
        return url_or_dir
    p = Path(url_or_dir).expanduser()
    if p.exists():
        return p.resolve().as_uri()
    raise DownloadError(f"'{url_or_dir}' is neither a URL (http://, https://, file://) nor an existing folder")


def _total_from_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 100-199/1000"`` -> (100, 1000); ``"bytes */1000"`` -> (None, 1000)."""
    if not value:
        return None, None
    m = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch_once(url: str, part: Path, size: int | None, timeout: float, chunk_size: int,
                progress: bool, desc: str, on_progress: Callable[[int], None]) -> int | None:
    """One attempt: continue ``part`` from its current length. Returns the total size the server announced
    (None if it did not say). Raises ``_Transient`` for retryable failures, DownloadError for fatal ones."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return size
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            _, total = _total_from_content_range(e.headers.get("Content-Range"))
            if total is not None and total == offset:
                return total
            part.unlink()  # our partial file does not fit the server's file: start again
            raise _Transient(f"server refused to resume at byte {offset} (HTTP 416); restarting") from e
        if e.code in RETRY_HTTP_CODES:
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; check the URL (or --mirror), or download the file "
                            f"in a browser and place it at {part.with_suffix('')}") from e
    except urllib.error.URLError as e:
        raise _Transient(f"{e.reason}") from e
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
        raise _Transient(f"{e.__class__.__name__}: {e}") from e

    with resp:
        status = getattr(resp, "status", None) or 200
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            start, total = _total_from_content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _Transient(f"server resumed at byte {start}, asked for {offset}; restarting")
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        elif status in (200, 203) or (not offset and status == 206):
            offset = 0  # the server ignored Range: the body is the whole file, start again
            total = length
            mode = "wb"
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {status}")
        if size is not None and total is not None and total != size:
            raise DownloadError(f"{url}: the server's file has {total} bytes but {size} were expected; "
                                "the file changed upstream or the mirror serves a different file")
        received = offset
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                   disable=not progress, leave=False)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        buf = resp.read(chunk_size)
                    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
                        raise _Transient(f"connection lost after {received} bytes ({e.__class__.__name__}: {e})") from e
                    if not buf:
                        break
                    f.write(buf)
                    received += len(buf)
                    bar.update(len(buf))
                    on_progress(len(buf))
        finally:
            bar.close()
        if total is not None and received < total:
            raise _Transient(f"connection closed after {received} of {total} bytes")
        if total is not None and received > total:
            part.unlink()
            raise _Transient(f"received {received} bytes, more than the announced {total}; restarting")
        return total if total is not None else received


def download_file(url: str, dest: str | Path, size: int | None = None, sha256: str | None = None,
                  retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0, timeout: float = 60.0,
                  chunk_size: int = 1 << 20, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` with resume, retries and verification; returns ``dest``.

    Skips the network when ``dest`` and its completion file exist (and match ``size``/``sha256``). A
    ``dest`` without completion file (placed by hand) is verified and adopted. On a size or checksum
    mismatch the partial file is removed and :class:`DownloadError` raised.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    marker, part = marker_path(dest), part_path(dest)
    if dest.is_file():
        if marker.is_file():
            try:
                info = json.loads(marker.read_text())
            except (OSError, ValueError):
                info = {}
            if (info.get("size") == dest.stat().st_size and (size is None or size == info.get("size"))
                    and (sha256 is None or sha256.lower() == str(info.get("sha256", "")).lower())):
                return dest
        _verify(dest, url, size, sha256, remove_on_fail=False)
        _write_marker(dest, url)
        return dest

    failures = 0
    total: int | None = None
    while True:
        got = [0]
        try:
            total = _fetch_once(url, part, size, timeout, chunk_size, progress, dest.name,
                                lambda n: got.__setitem__(0, got[0] + n))
            break
        except _Transient as e:
            failures = 1 if got[0] > 0 else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"cannot download {url} ({e}) after {retries + 1} attempts. No network? Download the file on a "
                    f"machine with internet and place it at {dest}, then re-run this command; or pass --mirror "
                    f"with a URL or folder holding '{dest.name}'."
                    + (f" The partial file {part} is kept for resuming." if part.exists() else "")
                ) from None
            delay = min(backoff * (2 ** (failures - 1)), max_backoff)
            tqdm.write(f"{dest.name}: {e}; retrying in {delay:.1f} s ({failures}/{retries})")
            _sleep(delay)
    _verify(part, url, size if size is not None else total, sha256, remove_on_fail=True, final=dest)
    part.replace(dest)
    _write_marker(dest, url)
    return dest


def _verify(path: Path, url: str, size: int | None, sha256: str | None, remove_on_fail: bool,
            final: Path | None = None) -> None:
    final = final or path
    actual = path.stat().st_size
    problem = None
    if size is not None and actual != size:
        problem = f"size mismatch: {actual} bytes, expected {size}"
    elif sha256 is not None:
        digest = sha256_file(path)
        if digest.lower() != sha256.lower():
            problem = f"SHA-256 mismatch: got {digest}, expected {sha256.lower()}"
    if problem:
        if remove_on_fail:
            path.unlink()
            raise DownloadError(f"{url}: {problem}; the download was corrupt or the file changed upstream and was "
                                f"removed. Re-run to download it again, or place a good copy at {final}")
        raise DownloadError(f"{final}: {problem}. Delete it and re-run to download {url} again")


def _write_marker(dest: Path, url: str) -> None:
    atomic_write_json(marker_path(dest), {"url": url, "file": dest.name, "size": dest.stat().st_size,
                                          "sha256": sha256_file(dest), "completed": time.strftime("%Y-%m-%dT%H:%M:%S")})


# --------------------------------------------------------------------------- benchmark datasets

def scene_complete(scene_dir: Path) -> bool:
    return (scene_dir / SCENE_MARKER).is_file()


def _strip_prefix(members: list[Member], placements: Sequence[ScenePlacement]) -> str:
    """The wrapper folder to strip so that members match the placement prefixes ("" when they already do)."""
    def matches(strip: str) -> int:
        return sum(1 for m in members for p in placements
                   if m.name.startswith(strip) and (m.name[len(strip):] + "/").startswith(p.prefix))
    if matches(""):
        return ""
    tops = {m.name.split("/", 1)[0] for m in members if m.name}
    if len(tops) == 1:
        strip = next(iter(tops)) + "/"
        if matches(strip):
            return strip
    return ""


def install_scenes(archive_path: str | Path, placements: Sequence[ScenePlacement], out: str | Path,
                   source: str = "", progress: bool = True) -> list[Path]:
    """Extract the members of ``placements`` into ``<out>/<dataset>/<scene>/``, all or nothing per run.

    Everything is written into a temporary folder inside ``out`` first; each scene gets its completion
    file there and is then renamed into place. Any failure removes the temporary folder.
    """
    archive_path, out = Path(archive_path), Path(out)
    members = list_members(archive_path)  # validates every member (traversal, links...) before writing anything
    strip = _strip_prefix(members, placements)

    def target_for(m: Member) -> str | None:
        if not m.name.startswith(strip):
            return None
        rel = m.name[len(strip):]
        for p in placements:
            if (rel + "/").startswith(p.prefix):
                rest = rel[len(p.prefix):]
                return f"{p.dataset}/{p.scene}/{rest}" if rest else f"{p.dataset}/{p.scene}"
        return None

    counts = {p: sum(1 for m in members if not m.is_dir and m.name.startswith(strip)
                     and m.name[len(strip):].startswith(p.prefix)) for p in placements}
    missing = [p for p, n in counts.items() if n == 0]
    if missing:
        raise ExtractError(f"{archive_path}: no files under {', '.join(repr(strip + p.prefix) for p in missing)} "
                           f"(scenes {', '.join(p.scene for p in missing)}); the archive's layout is not the "
                           "expected one: is it the right file?")
    for p in placements:
        target = out / p.dataset / p.scene
        if target.exists() and not scene_complete(target):
            raise ExtractError(f"{target} exists but was not installed by 'nifi download' (no {SCENE_MARKER}); "
                               "move or delete it and re-run")
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nifi-extract-", dir=out))
    installed = []
    try:
        extract_members(archive_path, tmp, target_for, members=members, progress=progress)
        for p in placements:
            staged = tmp / p.dataset / p.scene
            atomic_write_json(staged / SCENE_MARKER, {"dataset": p.dataset, "scene": p.scene,
                                                      "archive": archive_path.name, "source": source,
                                                      "files": counts[p]})
            target = out / p.dataset / p.scene
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():  # complete from an earlier run: keep it
                continue
            staged.replace(target)
            installed.append(target)
    finally:
        remove_tree(tmp)
    return installed


def download_benchmarks(out: str | Path, dataset: str = "all", mip_scenes: Sequence[str] | None = None,
                        mirror: str | None = None, keep_archives: bool = True, retries: int = 5,
                        backoff: float = 1.0, timeout: float = 60.0, progress: bool = True,
                        archives: Sequence[Archive] | None = None) -> dict[str, list[Path]]:
    """Fetch and install benchmark scenes; returns ``{dataset: [scene folders]}`` (installed or already there).

    ``archives`` overrides the registry (tests serve their own archives).
    """
    out = Path(out)
    datasets = registry.resolve_datasets(dataset)
    if mip_scenes and "mipnerf360" not in datasets:
        raise registry.RegistryError("--mip_scenes applies to --dataset mipnerf360 or all")
    scenes = {d: registry.select_scenes(d, list(mip_scenes) if (d == "mipnerf360" and mip_scenes) else None)
              for d in datasets}
    base = normalize_url(mirror) if mirror else None
    archive_dir = out / ARCHIVES_DIRNAME
    for archive, wanted in registry.plan(datasets, scenes, archives):
        todo = [p for p in wanted if not scene_complete(out / p.dataset / p.scene)]
        if not todo:
            continue
        url = archive.url_for(base)
        path = download_file(url, archive_dir / archive.filename, size=archive.size, sha256=archive.sha256,
                             retries=retries, backoff=backoff, timeout=timeout, progress=progress)
        install_scenes(path, todo, out, source=url, progress=progress)
        if not keep_archives:
            path.unlink(missing_ok=True)
            marker_path(path).unlink(missing_ok=True)
    result: dict[str, list[Path]] = {}
    for d in datasets:
        result[d] = [out / d / s for s in scenes[d]]
    return result
