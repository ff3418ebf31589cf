"""Downloads and extraction against a real HTTP server on 127.0.0.1 (Range support written here)."""
from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from nifi_lib.data import download as dl
from nifi_lib.data.colmap import ColmapCamera, ColmapImage, write_model
from nifi_lib.data.download import DownloadError, download_benchmarks, download_file
from nifi_lib.data.extract import ExtractError, extract_members, list_members
from nifi_lib.data.registry import Archive, ScenePlacement, plan, select_scenes
from nifi_lib.errors import NifiError


# --------------------------------------------------------------------------- test server

class FileServer:
    """Serves ``files[name] = bytes``; honours ``Range: bytes=N-`` unless ``ignore_range``.

    ``drop_after[name] = k``: the first ``len(drop_after)`` responses for that name announce the full
    length but close the connection after ``k`` body bytes (a connection lost mid-file).
    ``lie_length[name] = n``: announce ``n`` bytes as Content-Length (for truncation tests).
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, list[int]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/").split("/")[-1]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                data = server.files.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                drops = server.drop_after.get(name)
                if drops:
                    k = drops.pop(0)
                    self.wfile.write(body[:k])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    delays = []
    monkeypatch.setattr(dl, "_sleep", lambda s: delays.append(s))
    return delays


# --------------------------------------------------------------------------- archives built here

def tiny_colmap_scene(root: Path, n_images: int = 3) -> None:
    """A minimal COLMAP scene: sparse/0 (text) + images/*.png."""
    from PIL import Image

    cams = {1: ColmapCamera(1, "PINHOLE", 8, 6, np.array([10.0, 10.0, 4.0, 3.0]))}
    imgs = {}
    (root / "images").mkdir(parents=True)
    for i in range(n_images):
        name = f"img_{i:02d}.png"
        Image.fromarray(np.full((6, 8, 3), 40 * i, np.uint8)).save(root / "images" / name)
        imgs[i + 1] = ColmapImage(i + 1, np.array([1.0, 0, 0, 0]), np.array([0.1 * i, 0, 0]), 1, name)
    write_model(root / "sparse" / "0", cams, imgs, ext=".txt")


def zip_dir(src: Path, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return buf.getvalue()


def make_zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


@pytest.fixture
def scene_zip(tmp_path) -> bytes:
    src = tmp_path / "src"
    tiny_colmap_scene(src / "tandt" / "train")
    tiny_colmap_scene(src / "db" / "playroom", 2)
    (src / "README.txt").write_text("not a scene")
    return zip_dir(src)


def tandt_archive(url: str, data: bytes | None = None, size=None, sha=None) -> Archive:
    return Archive("tandt_db.zip", url, size=size, sha256=sha,
                   placements=(ScenePlacement("tandt/train/", "tanks_temples", "train"),
                               ScenePlacement("db/playroom/", "deepblending", "playroom")))


def test_registry_plan_and_mirror():
    from nifi_lib.data.registry import ARCHIVES

    p = plan(["mipnerf360"], {"mipnerf360": ["garden", "flowers"]})
    assert [(a.filename, [x.scene for x in pl]) for a, pl in p] == [("360_v2.zip", ["garden"]),
                                                                      ("360_extra_scenes.zip", ["flowers"])]
    assert ARCHIVES[0].url_for("http://m.example/data/") == "http://m.example/data/360_v2.zip"
    assert sum(len(a.placements) for a in ARCHIVES) == 13  # 9 + 2 + 2 scenes of Table 1
    with pytest.raises(NifiError, match="unknown mipnerf360 scene"):
        select_scenes("mipnerf360", ["gardn"])


# --------------------------------------------------------------------------- success, idempotence

def test_download_install_and_rerun_is_noop(server, scene_zip, tmp_path):
    server.files["tandt_db.zip"] = scene_zip
    arch = tandt_archive(server.url("tandt_db.zip"), size=len(scene_zip),
                         sha=hashlib.sha256(scene_zip).hexdigest())
    out = tmp_path / "bench"
    res = download_benchmarks(out, "all", archives=[arch], progress=False)
    assert res["tanks_temples"] == [out / "tanks_temples" / "train", out / "tanks_temples" / "truck"]
    train = out / "tanks_temples" / "train"
    assert sorted(p.name for p in (train / "images").iterdir()) == ["img_00.png", "img_01.png", "img_02.png"]
    assert (train / "sparse" / "0" / "cameras.txt").is_file()
    assert (out / "deepblending" / "playroom" / "images" / "img_01.png").is_file()
    assert json.loads((train / ".nifi_complete.json").read_text())["files"] == 6
    assert not (out / "README.txt").exists() and not list(out.glob(".nifi-extract-*"))
    marker = json.loads((out / "_archives" / "tandt_db.zip.complete.json").read_text())
    assert marker["sha256"] == hashlib.sha256(scene_zip).hexdigest()
    # the scenes are readable by the COLMAP reader
    from nifi_lib.data.scenes import load_scene
    assert [c.name for c in load_scene(train, split="all")] == ["img_00.png", "img_01.png", "img_02.png"]

    n = len(server.requests)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    download_benchmarks(out, "all", archives=[arch], progress=False)
    assert len(server.requests) == n  # no network at all
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # a scene deleted by the user is reinstalled from the kept archive, still without network
    import shutil
    shutil.rmtree(out / "deepblending" / "playroom")
    download_benchmarks(out, "deepblending", archives=[arch], progress=False)
    assert len(server.requests) == n and (out / "deepblending" / "playroom" / ".nifi_complete.json").is_file()


def test_cli_download_with_mirror(server, scene_zip, tmp_path, monkeypatch, capsys):
    """--mirror replaces the base URL and keeps the archive's file name (registry archives, local server)."""
    import nifi_lib.cli
    from nifi_lib.cli import main

    monkeypatch.setattr(nifi_lib.cli, "COMMAND_MODULES", ["nifi_lib.data.cli"])  # only this area's commands
    from nifi_lib.data import registry

    server.files["tandt_db.zip"] = scene_zip
    monkeypatch.setattr(registry, "ARCHIVES", (tandt_archive("http://unreachable.invalid/x/tandt_db.zip"),))
    out = tmp_path / "b"
    rc = main(["download", "--dataset", "tanks_temples", "--out", str(out), "--mirror", server.base + "/mirror/",
               "--no_progress"])
    assert rc == 0, capsys.readouterr().err
    assert server.requests[0][0] == "tandt_db.zip"
    assert (out / "tanks_temples" / "train" / "images" / "img_02.png").is_file()
    assert not (out / "deepblending").exists()  # only the requested dataset is installed
    rc = main(["download", "--dataset", "mipnerf360", "--out", str(out), "--mip_scenes", "nope"])
    assert rc == 2 and "unknown mipnerf360 scene" in capsys.readouterr().err


# --------------------------------------------------------------------------- resume, retries

def test_resume_after_dropped_connection(server, tmp_path, no_sleep):
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    server.files["big.bin"] = data
    server.drop_after["big.bin"] = [100_000, 50_000]
    dest = tmp_path / "big.bin"
    download_file(server.url("big.bin"), dest, sha256=hashlib.sha256(data).hexdigest(), chunk_size=8192,
                  backoff=0.5, progress=False)
    assert dest.read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=100000-", "bytes=150000-"]
    assert no_sleep == [0.5, 0.5]  # progress resets the back-off
    assert not (tmp_path / "big.bin.part").exists() and (tmp_path / "big.bin.complete.json").is_file()


def test_resume_partial_file_from_earlier_run_and_server_ignoring_range(server, tmp_path):
    data = bytes(range(256)) * 400
    server.files["a.bin"] = data
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(data[:5000])  # left by an interrupted run
    download_file(server.url("a.bin"), dest, size=len(data), progress=False)
    assert server.requests[-1][1] == "bytes=5000-" and dest.read_bytes() == data

    server.ignore_range = True  # answers 200 with the whole file: must restart, not append
    dest2 = tmp_path / "b.bin"
    (tmp_path / "b.bin.part").write_bytes(b"garbage!" * 10)
    server.files["b.bin"] = data
    download_file(server.url("b.bin"), dest2, size=len(data), progress=False)
    assert dest2.read_bytes() == data


def test_retries_are_bounded_and_errors_are_clear(server, tmp_path, no_sleep):
    with pytest.raises(DownloadError, match=r"HTTP 404.*place it at"):
        download_file(server.url("missing.zip"), tmp_path / "missing.zip", progress=False)
    assert no_sleep == []  # 404 is not retried
    # nothing listens on this port: connection refused, retried with exponential back-off, then a clear error
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DownloadError) as ei:
        download_file(f"http://127.0.0.1:{port}/360_v2.zip", tmp_path / "x" / "360_v2.zip", retries=3,
                      backoff=0.25, progress=False)
    msg = str(ei.value)
    assert f"127.0.0.1:{port}/360_v2.zip" in msg and "No network?" in msg and "--mirror" in msg
    assert str(tmp_path / "x" / "360_v2.zip") in msg
    assert no_sleep == [0.25, 0.5, 1.0]


# --------------------------------------------------------------------------- verification failures

def test_truncated_archive_size_mismatch_leaves_nothing(server, scene_zip, tmp_path):
    server.files["tandt_db.zip"] = scene_zip[: len(scene_zip) // 2]
    out = tmp_path / "bench"
    arch = tandt_archive(server.url("tandt_db.zip"), size=len(scene_zip))
    with pytest.raises(DownloadError, match=f"{len(scene_zip)} were expected"):
        download_benchmarks(out, "all", archives=[arch], progress=False)
    assert not (out / "tanks_temples").exists() and not (out / "deepblending").exists()
    assert not (out / "_archives" / "tandt_db.zip").exists()
    # size unknown: the download completes, but the truncated zip is refused before anything is written
    arch = tandt_archive(server.url("tandt_db.zip"))
    with pytest.raises(ExtractError, match="truncated or corrupt"):
        download_benchmarks(out, "all", archives=[arch], progress=False)
    assert not (out / "tanks_temples").exists() and not list(out.glob(".nifi-extract-*"))


def test_checksum_mismatch(server, scene_zip, tmp_path):
    server.files["tandt_db.zip"] = scene_zip
    out = tmp_path / "bench"
    arch = tandt_archive(server.url("tandt_db.zip"), size=len(scene_zip), sha="0" * 64)
    with pytest.raises(DownloadError, match="SHA-256 mismatch") as ei:
        download_benchmarks(out, "all", archives=[arch], progress=False)
    assert server.url("tandt_db.zip") in str(ei.value)
    assert not (out / "tanks_temples").exists()
    assert not (out / "_archives" / "tandt_db.zip").exists() and not (out / "_archives" / "tandt_db.zip.part").exists()


def test_manually_placed_archive_is_verified_and_used_offline(scene_zip, tmp_path):
    out = tmp_path / "bench"
    (out / "_archives").mkdir(parents=True)
    (out / "_archives" / "tandt_db.zip").write_bytes(scene_zip)
    arch = tandt_archive("http://unreachable.invalid/tandt_db.zip", sha=hashlib.sha256(scene_zip).hexdigest())
    download_benchmarks(out, "tanks_temples", archives=[arch], progress=False)
    assert (out / "tanks_temples" / "train" / ".nifi_complete.json").is_file()
    (out / "_archives" / "tandt_db.zip.complete.json").unlink()
    (out / "_archives" / "tandt_db.zip").write_bytes(scene_zip[:-10])
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_benchmarks(out, "deepblending", archives=[arch], progress=False)


# --------------------------------------------------------------------------- malicious archives

@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "tar_symlink", "tar_traversal"])
def test_malicious_archives_are_refused(server, tmp_path, kind):
    ok = {"tandt/train/images/a.png": b"x", "tandt/train/sparse/0/cameras.txt": b"", "db/playroom/x": b"y"}
    if kind == "traversal":
        data = make_zip({**ok, "tandt/train/../../../evil.txt": b"pwned"})
    elif kind == "absolute":
        # zipfile strips a leading "/" when writing: store a placeholder of the same length and patch the bytes
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, d in ok.items():
                zf.writestr(n, d)
            info = zipfile.ZipInfo("x" * len(str(tmp_path / "abs_evil.txt")))
            zf.writestr(info, b"pwned")
        data = buf.getvalue().replace(("x" * len(str(tmp_path / "abs_evil.txt"))).encode(),
                                      str(tmp_path / "abs_evil.txt").encode())
    elif kind == "symlink":
        data = make_zip(ok, symlinks={"tandt/train/link": str(tmp_path)})
    else:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for n, d in ok.items():
                ti = tarfile.TarInfo(n)
                ti.size = len(d)
                tf.addfile(ti, io.BytesIO(d))
            if kind == "tar_symlink":
                ti = tarfile.TarInfo("tandt/train/link")
                ti.type, ti.linkname = tarfile.SYMTYPE, "/etc"
                tf.addfile(ti)
            else:
                ti = tarfile.TarInfo("../tar_evil.txt")
                ti.size = 5
                tf.addfile(ti, io.BytesIO(b"pwned"))
        data = buf.getvalue()
    server.files["tandt_db.zip"] = data
    out = tmp_path / "out" / "bench"
    arch = tandt_archive(server.url("tandt_db.zip"))
    with pytest.raises(ExtractError, match="refusing to extract") as ei:
        download_benchmarks(out, "all", archives=[arch], progress=False)
    assert "tandt_db.zip" in str(ei.value)
    assert {"traversal": "'..'", "tar_traversal": "'..'", "absolute": "absolute path", "symlink": "symbolic link",
            "tar_symlink": "symbolic link"}[kind] in str(ei.value)
    assert not (out / "tanks_temples").exists() and not (out / "deepblending").exists()
    assert not list(out.glob(".nifi-extract-*"))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "abs_evil.txt").exists()
    assert not (tmp_path / "out" / "tar_evil.txt").exists()
    written = {p.name for p in tmp_path.rglob("*")}
    assert "link" not in written and "evil.txt" not in written


def test_extract_members_tar_and_zip_roundtrip(tmp_path):
    entries = {"a/b.txt": b"hello", "a/c/d.bin": bytes(1000)}
    z = tmp_path / "x.zip"
    z.write_bytes(make_zip(entries))
    t = tmp_path / "x.tar"
    with tarfile.open(t, "w") as tf:
        for n, d in entries.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            tf.addfile(ti, io.BytesIO(d))
    for arc in (z, t):
        dest = tmp_path / f"out_{arc.suffix[1:]}"
        assert extract_members(arc, dest, progress=False) == 2
        assert (dest / "a" / "b.txt").read_bytes() == b"hello" and (dest / "a/c/d.bin").stat().st_size == 1000
        assert sorted(m.name for m in list_members(arc) if not m.is_dir) == ["a/b.txt", "a/c/d.bin"]
