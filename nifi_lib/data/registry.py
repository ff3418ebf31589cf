"""Where the benchmark datasets come from: one table of archives, their scenes and their checksums.

The paper evaluates on Mip-NeRF360 (9 scenes), Tanks & Temples (``train``, ``truck``) and DeepBlending
(``playroom``, ``drjohnson``) with the 3DGS protocol (Sec. 4.2); training uses DL3DV (1000 scenes), which
is gated and ingested from a local copy (:mod:`nifi_lib.data.dl3dv`).

Expected sizes and SHA-256 digests are ``None`` where we do not know them from a trustworthy source:
we never invent a checksum. With ``None`` the download is still checked against the size the server
announces (``Content-Length``/``Content-Range``) and the archive must open as a valid zip; the digest
actually seen is written into the archive's completion file (``<archive>.complete.json``) so that it
can be pinned here later.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import NifiError


class RegistryError(NifiError, ValueError):
    """An unknown dataset or scene name."""


@dataclass(frozen=True)
class ScenePlacement:
    """Archive members under ``prefix`` (e.g. ``"tandt/train/"``) become ``<out>/<dataset>/<scene>/``."""

    prefix: str
    dataset: str
    scene: str


@dataclass(frozen=True)
class Archive:
    """One downloadable archive and the scenes it holds."""

    filename: str
    url: str
    size: int | None = None          # bytes; None = unknown (never guessed)
    sha256: str | None = None        # hex digest; None = unknown (never guessed)
    placements: tuple[ScenePlacement, ...] = field(default_factory=tuple)

    def url_for(self, mirror: str | None = None) -> str:
        """The archive's URL, or ``<mirror>/<filename>`` when a mirror base URL is given."""
        if not mirror:
            return self.url
        return mirror.rstrip("/") + "/" + self.filename

    def scenes(self, dataset: str | None = None) -> list[str]:
        return [p.scene for p in self.placements if dataset is None or p.dataset == dataset]


MIPNERF360_SCENES = ("bicycle", "bonsai", "counter", "garden", "kitchen", "room", "stump", "flowers", "treehill")
MIPNERF360_OUTDOOR = ("bicycle", "flowers", "garden", "stump", "treehill")   # 3DGS evaluates these at images_4
MIPNERF360_INDOOR = ("bonsai", "counter", "kitchen", "room")                 # ... and these at images_2


def default_downscale(dataset: str, scene: str) -> int | None:
    """The image folder 3DGS evaluates a benchmark scene at: ``images_4`` (4) for the outdoor Mip-NeRF360 scenes,
    ``images_2`` (2) for the indoor ones; None (``images/`` as shipped) for every other scene."""
    if dataset == "mipnerf360":
        if scene in MIPNERF360_OUTDOOR:
            return 4
        if scene in MIPNERF360_INDOOR:
            return 2
    return None


TANKS_TEMPLES_SCENES = ("train", "truck")
DEEPBLENDING_SCENES = ("playroom", "drjohnson")

DATASETS = ("mipnerf360", "tanks_temples", "deepblending")
# The folder each benchmark dataset lands in under ``--out`` (e.g. data/benchmarks/mipnerf360/garden).
DATASET_SCENES: dict[str, tuple[str, ...]] = {
    "mipnerf360": MIPNERF360_SCENES,
    "tanks_temples": TANKS_TEMPLES_SCENES,
    "deepblending": DEEPBLENDING_SCENES,
}

ARCHIVES: tuple[Archive, ...] = (
    # Mip-NeRF360 (Barron et al. 2022), Google Research bucket. Members are "<scene>/images*/...",
    # "<scene>/sparse/0/..." and "<scene>/poses_bounds.npy" (plus two disclaimer .txt files at the top).
    Archive(
        filename="360_v2.zip",
        url="https://storage.googleapis.com/gresearch/refraw360/360_v2.zip",
        placements=tuple(ScenePlacement(f"{s}/", "mipnerf360", s)
                         for s in ("bicycle", "bonsai", "counter", "garden", "kitchen", "room", "stump")),
    ),
    Archive(
        filename="360_extra_scenes.zip",
        url="https://storage.googleapis.com/gresearch/refraw360/360_extra_scenes.zip",
        placements=(ScenePlacement("flowers/", "mipnerf360", "flowers"),
                    ScenePlacement("treehill/", "mipnerf360", "treehill")),
    ),
    # The 3DGS authors' COLMAP reconstructions of Tanks & Temples and DeepBlending (Kerbl et al. 2023).
    Archive(
        filename="tandt_db.zip",
        url="https://repo-sam.inria.fr/fungraph/3d-gaussian-splatting/datasets/input/tandt_db.zip",
        placements=(ScenePlacement("tandt/train/", "tanks_temples", "train"),
                    ScenePlacement("tandt/truck/", "tanks_temples", "truck"),
                    ScenePlacement("db/playroom/", "deepblending", "playroom"),
                    ScenePlacement("db/drjohnson/", "deepblending", "drjohnson")),
    ),
)


def resolve_datasets(dataset: str) -> list[str]:
    """``"all"`` -> every benchmark dataset; otherwise the one name, validated."""
    if dataset == "all":
        return list(DATASETS)
    if dataset not in DATASET_SCENES:
        raise RegistryError(f"unknown dataset '{dataset}' (choose from: {', '.join(DATASETS)}, all, dl3dv)")
    return [dataset]


def select_scenes(dataset: str, scenes: list[str] | None = None) -> list[str]:
    """The scenes to fetch of ``dataset``: all of them, or the named subset (validated, order kept)."""
    known = DATASET_SCENES[dataset]
    if not scenes:
        return list(known)
    bad = [s for s in scenes if s not in known]
    if bad:
        raise RegistryError(f"unknown {dataset} scene(s) {', '.join(bad)} (known: {', '.join(known)})")
    return list(dict.fromkeys(scenes))


def plan(datasets: list[str], scenes: dict[str, list[str]],
         archives: "tuple[Archive, ...] | list[Archive] | None" = None) -> list[tuple[Archive, list[ScenePlacement]]]:
    """For each archive needed: the placements (dataset, scene) wanted from it; archives not needed are left out."""
    out = []
    for a in (ARCHIVES if archives is None else archives):
        wanted = [p for p in a.placements if p.dataset in datasets and p.scene in scenes.get(p.dataset, ())]
        if wanted:
            out.append((a, wanted))
    return out
