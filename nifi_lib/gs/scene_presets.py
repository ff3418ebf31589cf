"""Named sets of procedural scenes (``nifi scenes build --preset v3``): generated, not hand-placed, worlds.

A preset is a list of training scenes and held-out scenes; each scene is drawn from its own seed by
:func:`generated_scene` (a textured floor, textured walls in two of three layouts, four to seven boxes,
spheres and upright cylinders of varying size, some stacked; textures: the photographs inside scikit-image)
and built by :func:`~nifi_lib.gs.scenes.build_scene` (exact ray-cast views, every 8th a test view, and a
fitted 3DGS). Layout under ``out``: ``train/<name>/``, ``heldout/<name>/`` (scene folders as
``nifi scenes build`` writes them) and ``preset.json`` (the settings, every scene's ``scene.json``, seconds).
A scene whose ``scene.json`` records the same settings is kept (a rerun resumes).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_json
from .scenes import Cylinder, ProceduralScene, Quad, Sphere, _orbit, box, build_scene, texture

OBJECT_PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "colorwheel")
GREY_PHOTOS = ("brick", "grass", "gravel", "camera", "moon", "clock", "coins", "page", "text")
FLOOR_PHOTOS = ("gravel", "grass", "brick", "moon", "coins")
WALL_PHOTOS = ("brick", "camera", "clock", "page", "astronaut", "coffee", "chelsea", "hubble_deep_field")
LAYOUTS = ("corner", "wall", "open")


@dataclass
class Preset:
    name: str
    train: list[str]
    heldout: list[str]
    size: int = 128
    n_views: int = 48
    iterations: int = 3000
    max_gaussians: int = 15000
    init_points: int = 8000
    texture_size: int = 256
    prior_worlds: int = 0      # more generated worlds, ground truth only (no 3DGS fit): training frames of the prior
    paired_prior_worlds: int = 0   # the first k of them also fitted (3DGS) and paired: more worlds for NiFi's training
    prior_views: int | None = None  # views of the other prior-only worlds (None: n_views): more worlds for the frames

    def __post_init__(self) -> None:
        if self.prior_views is not None and self.prior_views < 1:
            raise ValueError(f"scene preset '{self.name}': prior_views={self.prior_views} must be >= 1")
        if not 0 <= self.paired_prior_worlds <= self.prior_worlds:
            raise ValueError(f"scene preset '{self.name}': paired_prior_worlds={self.paired_prior_worlds} must be "
                             f"between 0 and prior_worlds={self.prior_worlds}")

    def build_settings(self) -> dict:
        return {"size": self.size, "n_views": self.n_views, "iterations": self.iterations,
                "max_gaussians": self.max_gaussians, "init_points": self.init_points}


PRESETS = {
    # issue 17: six training worlds and one held-out world at 128 px, 48 views each (42 train, 6 test); 30 more
    # worlds for the prior alone (GPU run 1: the VAE overfit its 252 frames, 33.5 dB train vs 27.9 dB held out)
    "v3": Preset("v3", [f"world_{i}" for i in range(6)], ["world_heldout"], prior_worlds=30),
    # the same generator at a size the tests afford on one CPU thread
    "tiny": Preset("tiny", ["world_0", "world_1"], ["world_heldout"], size=32, n_views=9, iterations=40,
                   max_gaussians=400, init_points=300, texture_size=64, prior_worlds=1),
}


def _photo(name: str, rng: np.random.Generator, size: int):
    tint = (1.0, 1.0, 1.0) if name in OBJECT_PHOTOS else tuple(float(x) for x in rng.uniform(0.45, 1.0, 3))
    return texture(name, tint, size=size)


def generated_scene(name: str, seed: int, texture_size: int = 256, layout: str | None = None) -> ProceduralScene:
    """A random world from ``seed`` (same seed, same world): floor, walls per ``layout`` (corner: two walls,
    cameras on a 100-degree arc; wall: one back wall, a 140-degree arc; open: no wall, a full orbit) and
    4-7 objects on the floor without overlaps, a third of the boxes carrying a sphere."""
    rng = np.random.default_rng(seed)
    layout = layout or LAYOUTS[seed % len(LAYOUTS)]
    used: list[str] = []

    def tex(pool):
        n = str(rng.choice(pool))
        used.append(n)
        return _photo(n, rng, texture_size)

    half = 2.6
    prims: list = [Quad((-half, -half, 0.0), (2 * half, 0.0, 0.0), (0.0, 2 * half, 0.0), tex(FLOOR_PHOTOS),
                        (float(rng.uniform(1.5, 3.0)),) * 2)]
    w = 2.2
    if layout in ("corner", "wall"):
        prims.append(Quad((-half, -w, 0.0), (2 * half, 0.0, 0.0), (0.0, 0.0, 2.2), tex(WALL_PHOTOS),
                          (float(rng.uniform(1.0, 2.5)), 1.0)))
    if layout == "corner":
        prims.append(Quad((-w, -half, 0.0), (0.0, 2 * half, 0.0), (0.0, 0.0, 2.2), tex(WALL_PHOTOS),
                          (float(rng.uniform(1.0, 2.5)), 1.0)))
    placed: list[tuple[float, float, float]] = []   # (x, y, footprint radius)
    n_obj = int(rng.integers(4, 8))
    for _ in range(n_obj):
        kind = str(rng.choice(["box", "sphere", "cylinder"]))
        r = float(rng.uniform(0.15, 0.42))
        for _try in range(40):
            x, y = (float(v) for v in rng.uniform(-1.5, 1.5, 2))
            if x * x + y * y < 1.6 ** 2 and all(math.hypot(x - px, y - py) > r + pr + 0.05 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((x, y, r))
        t = tex(OBJECT_PHOTOS)
        if kind == "box":
            hgt = float(rng.uniform(0.25, 1.0))
            sx, sy = r * math.sqrt(2) * float(rng.uniform(0.8, 1.0)), r * math.sqrt(2) * float(rng.uniform(0.6, 1.0))
            prims += box((x, y, hgt / 2), (sx, sy, hgt), t, float(rng.uniform(0, 90)))
            if rng.uniform() < 0.33:
                rs = min(sx, sy) / 2
                prims.append(Sphere((x, y, hgt + rs), rs, tex(OBJECT_PHOTOS)))
        elif kind == "sphere":
            prims.append(Sphere((x, y, r), r, t, (float(rng.integers(1, 3)), 1.0)))
        else:
            prims.append(Cylinder((x, y), 0.0, float(rng.uniform(0.3, 1.1)), r * 0.85, t,
                                  (float(rng.integers(1, 3)), 1.0)))
    radius = float(rng.uniform(3.2, 3.6))
    if layout == "corner":
        orbit = _orbit(radius, 1.0, 2.2, math.radians(-5), math.radians(95))
    elif layout == "wall":
        orbit = _orbit(radius, 1.0, 2.2, math.radians(20), math.radians(160))
    else:
        orbit = _orbit(radius, 1.0, 2.4)
    desc = f"generated world ({layout}, {len(placed)} objects, seed {seed})"
    return ProceduralScene(name, prims, (0.0, 0.0, 0.4), orbit, desc, sorted(set(used)))


PRIOR_ONLY = "prior_only"   # the group (and folder) of the worlds rendered for the prior only


def preset_scenes(preset: Preset, seed: int = 0) -> dict[str, tuple[str, ProceduralScene]]:
    """``{name: (group, scene)}`` of a preset (group ``train``, ``heldout`` or ``prior_only``); scene ``i`` of
    the preset (train first, then held out, then the prior's ``prior_<k>``) is drawn from ``1000 * seed + i``."""
    names = ([("train", n) for n in preset.train] + [("heldout", n) for n in preset.heldout]
             + [(PRIOR_ONLY, f"prior_{k}") for k in range(preset.prior_worlds)])
    return {n: (grp, generated_scene(n, 1000 * seed + i, preset.texture_size)) for i, (grp, n) in enumerate(names)}


def fitted(preset: Preset, name: str, group: str) -> bool:
    """Whether world ``name`` of ``group`` gets a 3DGS fit: training and held-out worlds, and the first
    ``preset.paired_prior_worlds`` prior-only worlds (``prior_<k>``, k < that number)."""
    if group != PRIOR_ONLY:
        return True
    return int(name.rsplit("_", 1)[1]) < preset.paired_prior_worlds


def paired_prior_names(preset: Preset) -> list[str]:
    """The prior-only worlds that are also fitted and paired for NiFi's training (their folders stay under
    ``prior_only/``: the prior still sees every view of them, as before)."""
    return [f"prior_{k}" for k in range(preset.paired_prior_worlds)]


def get_preset(name: str | Preset, **overrides) -> Preset:
    """Preset ``name`` of :data:`PRESETS` (or a :class:`Preset` itself, e.g. one made for a measurement) with
    ``overrides`` applied."""
    if isinstance(name, Preset):
        return replace(name, **overrides)
    if name not in PRESETS:
        raise ValueError(f"unknown scene preset '{name}'; available: {list(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def _is_built(folder: Path, seed: int, settings: dict, fit: bool = True) -> bool:
    try:
        info = json.loads((folder / "scene.json").read_text())
    except (OSError, ValueError):
        return False
    return (info.get("seed") == seed and info.get("views") == settings["n_views"]
            and info.get("image_size") == [settings["size"]] * 2
            and info.get("iterations") == (settings["iterations"] if fit else 0)
            and (not fit or (folder / "point_cloud.ply").is_file()))


def build_preset(name: str | Preset, out: str | Path, seed: int = 0, progress: bool = True, device: str = "cpu",
                 backend: str = "torch", frames_only: bool = False, **overrides) -> dict:
    """Build every scene of preset ``name`` (a name of :data:`PRESETS` or a :class:`Preset`; ``overrides``: its
    size fields) under ``out``; returns the
    manifest written to ``out/preset.json``. ``frames_only``: the ground truth of every world and no 3DGS fit
    (all the prior needs); a later full build fits the worlds and leaves those frames as they are."""
    preset = get_preset(name, **overrides)
    out = Path(out)
    settings = preset.build_settings()
    t0 = time.perf_counter()
    infos, built = {}, []
    for scene_name, (group, scene) in preset_scenes(preset, seed).items():
        folder = out / group / scene_name
        scene_seed = 1000 * seed + len(infos)
        fit = fitted(preset, scene_name, group) and not frames_only
        own = settings if fitted(preset, scene_name, group) else {**settings, "n_views": preset.prior_views or preset.n_views}
        if _is_built(folder, scene_seed, own, fit) or (frames_only and _is_built(folder, scene_seed, own)):
            infos[scene_name] = json.loads((folder / "scene.json").read_text())
        else:
            infos[scene_name] = build_scene(scene, folder, seed=scene_seed, progress=progress, device=device,
                                            backend=backend, fit=fit, **own)
            built.append(scene_name)
        infos[scene_name]["group"] = group
    manifest = {"preset": preset.name, "settings": asdict(preset), "seed": seed, "train_scenes": preset.train,
                "heldout_scenes": preset.heldout,
                "prior_only_scenes": [n for n, (g, _) in preset_scenes(preset, seed).items() if g == PRIOR_ONLY],
                "paired_prior_scenes": paired_prior_names(preset),
                "frames_only": frames_only, "built_now": built, "seconds": round(time.perf_counter() - t0, 2),
                "scenes": infos}
    atomic_write_json(out / "preset.json", manifest)
    return manifest
