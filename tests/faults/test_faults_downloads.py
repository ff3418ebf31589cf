"""Download faults through ``nifi download --mirror`` against a loopback HTTP server (the pattern of
tests/test_data_download.py): a truncated archive, a path-traversal member, a dropped connection, a checksum
mismatch. Each fails with a one-line error naming the archive (or URL) and the problem; no scene folder is
half-installed, no extraction folder is left, and a dataset installed by an earlier run is unchanged."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from faultkit import assert_cli_error, leftovers, snapshot
from test_data_download import FileServer, make_zip, tiny_colmap_scene

from nifi_lib.data import registry
from nifi_lib.data.registry import Archive, ScenePlacement


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture
def archives(tmp_path_factory):
    """Two archives: ``db.zip`` (DeepBlending ``playroom``) and ``tandt.zip`` (Tanks&Temples ``train``)."""
    src = tmp_path_factory.mktemp("src")
    tiny_colmap_scene(src / "db" / "playroom", 2)
    tiny_colmap_scene(src / "tandt" / "train", 3)
    return {"db.zip": _zip_sub(src, "db"), "tandt.zip": _zip_sub(src, "tandt")}


def _zip_sub(src: Path, top: str) -> bytes:
    """A zip of ``src/<top>/`` whose members keep the ``<top>/`` prefix."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((src / top).rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    return buf.getvalue()


def _registry(monkeypatch, tandt_sha: str | None = None, tandt_size: int | None = None) -> None:
    """The registry as the CLI sees it: unreachable upstream URLs (only --mirror can serve them)."""
    monkeypatch.setattr(registry, "ARCHIVES", (
        Archive("db.zip", "http://unreachable.invalid/db.zip",
                placements=(ScenePlacement("db/playroom/", "deepblending", "playroom"),)),
        Archive("tandt.zip", "http://unreachable.invalid/tandt.zip", size=tandt_size, sha256=tandt_sha,
                placements=(ScenePlacement("tandt/train/", "tanks_temples", "train"),)),
    ))


@pytest.fixture
def installed(server, archives, monkeypatch, nifi, tmp_path):
    """``<out>/deepblending/playroom`` installed by an earlier, successful `nifi download`."""
    _registry(monkeypatch)
    server.files["db.zip"] = archives["db.zip"]
    out = tmp_path / "bench"
    res = _download(nifi, server, out, "deepblending")
    assert res.rc == 0, res.err
    assert (out / "deepblending" / "playroom" / ".nifi_complete.json").is_file()
    return out


def _download(nifi, server, out, dataset="tanks_temples", *extra):
    return nifi("download", "--dataset", dataset, "--out", out, "--mirror", server.base + "/mirror/",
                "--no_progress", "--backoff", "0", *extra)


def _assert_not_installed(out):
    assert not (out / "tanks_temples").exists()
    assert not list(out.glob(".nifi-extract-*"))


def test_truncated_archive(server, archives, installed, monkeypatch, nifi):
    """The mirror serves the first half of the zip (with an honest Content-Length, so the transfer itself
    looks complete): refused when listing the archive, before any member is written."""
    out = installed
    before = snapshot(out / "deepblending")
    data = archives["tandt.zip"]
    server.files["tandt.zip"] = data[: len(data) // 2]
    res = _download(nifi, server, out)
    assert_cli_error(res, "download", str(out / "_archives" / "tandt.zip"), "truncated or corrupt")
    _assert_not_installed(out)
    assert snapshot(out / "deepblending") == before and not leftovers(out / "deepblending")
    # with the size known (the registry pins it), the short transfer itself is refused and removed
    _registry(monkeypatch, tandt_size=len(data))
    (out / "_archives" / "tandt.zip").unlink()
    (out / "_archives" / "tandt.zip.complete.json").unlink()
    res = _download(nifi, server, out, "tanks_temples", "--retries", "0")
    assert_cli_error(res, "download", "tandt.zip", f"{len(data)} were expected")
    _assert_not_installed(out)
    assert not (out / "_archives" / "tandt.zip").exists()


def test_path_traversal_member(server, installed, nifi, tmp_path):
    out = installed
    before = snapshot(out / "deepblending")
    server.files["tandt.zip"] = make_zip({"tandt/train/images/a.png": b"x",
                                          "tandt/train/../../../../evil.txt": b"pwned"})
    res = _download(nifi, server, out)
    assert_cli_error(res, "download", "tandt.zip", "'..'", "refusing to extract")
    _assert_not_installed(out)
    assert not list(tmp_path.rglob("evil.txt"))
    assert snapshot(out / "deepblending") == before


def test_dropped_connection_then_resume(server, archives, installed, nifi):
    """The connection drops mid-file, then on the next attempt before any byte: after --retries attempts
    without progress the command stops with an error naming the URL and the kept partial file; the next run
    resumes from it (HTTP Range) and installs the scene."""
    out = installed
    before = snapshot(out / "deepblending")
    data = archives["tandt.zip"]
    server.files["tandt.zip"] = data
    server.drop_after["tandt.zip"] = [len(data) // 3, 0]
    res = _download(nifi, server, out, "tanks_temples", "--retries", "1")
    assert_cli_error(res, "download", server.base + "/mirror/tandt.zip", "after 2 attempts", "kept for resuming")
    part = out / "_archives" / "tandt.zip.part"
    assert part.stat().st_size == len(data) // 3
    _assert_not_installed(out)
    res = _download(nifi, server, out)
    assert res.rc == 0, res.err
    assert server.requests[-1] == ("tandt.zip", f"bytes={len(data) // 3}-")
    assert hashlib.sha256((out / "_archives" / "tandt.zip").read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (out / "tanks_temples" / "train" / ".nifi_complete.json").is_file() and not part.exists()
    assert snapshot(out / "deepblending") == before


def test_checksum_mismatch(server, archives, installed, monkeypatch, nifi):
    out = installed
    before = snapshot(out / "deepblending")
    _registry(monkeypatch, tandt_sha="0" * 64)
    server.files["tandt.zip"] = archives["tandt.zip"]
    res = _download(nifi, server, out)
    assert_cli_error(res, "download", server.base + "/mirror/tandt.zip", "SHA-256 mismatch")
    _assert_not_installed(out)
    assert not (out / "_archives" / "tandt.zip").exists() and not (out / "_archives" / "tandt.zip.part").exists()
    assert snapshot(out / "deepblending") == before
