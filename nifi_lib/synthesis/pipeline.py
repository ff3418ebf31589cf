"""Sec. 3 Artifact Synthesis end to end: dense 3DGS -> pruned levels -> coded files -> (clean, degraded) pairs.

``synthesize_scene`` writes ``artifacts/<scene>/``::

    full.ply            the dense scene (given model, the scene's own PLY, or fitted here)
    level_<l>.nifigs    one bitstream per level l = 0..L-1 (level 0 = c_min primitives)
    synth.json          schedule, importance, per-level sizes (bytes on disk, zlib/lzma baselines), timings,
                        quality: ``full_psnr_train``/``full_psnr_test`` of the dense model and per level
                        ``psnr_test`` of the decoded level file (:func:`level_test_psnr`)

The dense model's quality is checked before anything else is made: :func:`dense_quality_warnings` warns
(a line starting with ``warning:`` on stderr, also listed in synth.json ``warnings``) when the test PSNR is
below :data:`DENSE_PSNR_MIN_DB` or more than :data:`DENSE_PSNR_MAX_GAP_DB` below the training PSNR (a
misaligned model, e.g. one left in a normalized frame, or an under-fitted scene).

``codec_pairs`` decodes each level, renders it at the views of a split and writes the pair layout of
:mod:`nifi_lib.synthesis.pairs`; ``proxy_pairs`` and ``precomputed_pairs`` write the same layout from
image-space proxy degradations or from an external codec's renders; ``prepare_benchmark`` runs one of
the three modes over every scene of a dataset folder (resumable per scene, shardable).

Every function validates its inputs (scene layout, cameras, every image decodes, PLY, bitstreams)
before it writes anything, and builds each output folder in a hidden staging folder that is renamed
into place at the end, so a failure never leaves a partial output folder.
"""
from __future__ import annotations

import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..io.hashing import sha256_file
from ..paths import repo_path
from . import codec, compact
from .finetune import finetune
from .importance import gode_importance, prune_top_k
from .pairs import (MANIFEST, display_path, manifest_complete, mean_psnr, merge_levels, psnr,
                    read_manifest, staged_directory, write_manifest, write_pair)
from .precomputed import PrecomputedError, match_renders, precomputed_folder
from .proxy import proxy_degrade, proxy_seed
from .quantize import morton_order
from .schedule import PAPER_C_MIN, PAPER_RATE_LABELS, level_sizes, rate_labels
from .scene import SPLITS, SceneError, SourceScene, View, find_scenes, open_scene

SYNTH_JSON = "synth.json"
FULL_PLY = "full.ply"
POINT_CLOUD = "point_cloud.ply"
MODES = ("nifi-codec", "proxy", "precomputed")
# The dense model is reported as poor below this test PSNR (dB): a well-fitted real scene is ~25-30 dB.
DENSE_PSNR_MIN_DB = 20.0
# ... or when its test PSNR is this far below its training PSNR (dB): misaligned cameras or an over-fit.
DENSE_PSNR_MAX_GAP_DB = 6.0
PROXY_NOTE = ("proxy mode: image-space degradations (detail loss, blotches, colour shifts) imitating 3DGS "
              "compression artifacts; no codec was run, levels have no size")


class SynthesisError(NifiError, ValueError):
    """Artifact synthesis cannot proceed (missing artifacts, inconsistent settings...)."""


def level_filename(level: int) -> str:
    return f"level_{level}.nifigs"


@dataclass
class SynthesisSettings:
    """Knobs of ``nifi synthesize`` (defaults: the paper's schedule, small CPU-friendly iteration counts)."""

    c_min: int = PAPER_C_MIN
    num_levels: int = 3
    rates: list[str] | None = field(default_factory=lambda: list(PAPER_RATE_LABELS))
    n_top: int | None = None
    fit_iterations: int = 3000
    finetune_iterations: int = 300
    importance_views: int | None = None   # None: every training view
    backend: str = "auto"
    seed: int = 0
    background: tuple[float, float, float] | None = None
    downscale: int | None = None          # images_<d>/ of COLMAP / nerfstudio scenes
    device: str | None = None             # None: cuda when available, else cpu
    codec_version: int = 3                # .nifigs version written (1: 8-bit per channel; 2, 3: compact)
    qat: bool = True                      # v2/v3: quantization-aware fine-tuning (straight-through)
    budget_bytes_per_gaussian: float | None = 12.0   # v2/v3: the SH degree / codebook of a level fit this budget
    codec_settings: dict | None = None    # v2/v3: overrides of compact.CompactSettings (bit depths, codebook)

    def labels(self) -> list[str]:
        return rate_labels(self.num_levels, self.rates)


# --- validation helpers ---------------------------------------------------------------------------------

def check_images(scene: SourceScene, views: Sequence[View], progress: bool = False, desc: str = "check images") -> None:
    """Decode every image once (clear error naming the first bad file); keeps nothing in memory."""
    for v in tqdm(views, desc=desc, disable=not progress, leave=False):
        scene.load_images([v])


def _subsample(n: int, k: int | None) -> list[int]:
    if k is None or k >= n:
        return list(range(n))
    if k < 1:
        raise SynthesisError(f"importance_views must be >= 1, got {k}")
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)})


def _fit_full(cameras, images, iterations: int, settings: SynthesisSettings, background, progress: bool,
              points: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Fit a dense 3DGS with :func:`nifi_lib.gs.fit.fit_gaussians` (only the keyword arguments it accepts),
    from the scene's sparse ``points`` ``(xyz, rgb)`` when it has them (COLMAP, LLFF, nerfstudio), else random."""
    try:
        from ..gs.fit import fit_gaussians
    except ImportError as e:  # pragma: no cover - gs area incomplete
        raise SynthesisError("no pretrained PLY given and nifi_lib.gs.fit is not available to fit one") from e
    wanted = dict(iterations=int(iterations), seed=settings.seed, background=background, backend=settings.backend,
                  progress=progress, device=_device(settings.device))
    if points is not None:
        wanted.update(init=points[0], init_colors=points[1])
    params = inspect.signature(fit_gaussians).parameters
    accepts_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in wanted.items() if accepts_kw or k in params}
    model, history = fit_gaussians(cameras, images, **kwargs)
    return model, history


def _device(name: str | None) -> torch.device:
    from ..devices import default_device

    return torch.device(default_device(name))


def _level_codec(s: SynthesisSettings, pruned) -> tuple[compact.CompactSettings | None, object]:
    """(compact settings planned for the budget, straight-through quantizer or None) of one pruned level."""
    if s.codec_version == 1:
        return None, None
    if s.codec_version not in codec.COMPACT:
        raise SynthesisError(f"codec_version must be 1, 2 or 3, got {s.codec_version}")
    try:
        over = {"seed": s.seed, **(s.codec_settings or {})}
        # version 2 keeps its own encoder defaults (compact.v2_settings), version 3 the CompactSettings defaults
        base = (compact.v2_settings(**over) if s.codec_version == 2
                else compact.CompactSettings(**{**over, "version": 3}))
    except TypeError as e:
        raise SynthesisError(f"codec_settings: {e}") from e
    plan = codec.plan_level(pruned, base, s.budget_bytes_per_gaussian)
    use = s.qat and s.finetune_iterations > 0
    # version 3 learns the SH-rest codebook while fine-tuning; version 2 keeps its k-means refits (docs/codec.md)
    return plan, (compact.StraightThrough(plan, pruned.sh_degree, learn_codebook=s.codec_version == 3) if use else None)


# --- synthesize ---------------------------------------------------------------------------------------

def synth_complete(out_dir: str | Path) -> dict | None:
    """The synth.json of ``out_dir`` if it is complete (every level file present with its size), else None."""
    meta, _ = _read_synth(out_dir)
    return meta


def _read_synth(out_dir: str | Path) -> tuple[dict | None, str | None]:
    """(synth.json of ``out_dir``, None) when complete, else (None, what is missing or wrong)."""
    out_dir = Path(out_dir)
    path = out_dir / SYNTH_JSON
    if not path.is_file():
        return None, f"{SYNTH_JSON} not found"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{SYNTH_JSON} is unreadable ({e.__class__.__name__}: {e})"
    if not meta.get("complete"):
        return None, f"{SYNTH_JSON} is not marked complete"
    if not (out_dir / FULL_PLY).is_file():
        return None, f"{FULL_PLY} not found"
    for lv in meta.get("levels", []):
        f = out_dir / lv["file"]
        if not f.is_file():
            return None, f"level file {lv['file']} not found"
        if f.stat().st_size != lv["bytes"]:
            return None, (f"level file {lv['file']} has {f.stat().st_size} bytes, {SYNTH_JSON} says {lv['bytes']} "
                          "(truncated or replaced)")
    return meta, None


def dense_quality_warnings(psnr_train: float, psnr_test: float) -> list[str]:
    """``warning: ...`` lines when the dense model looks poor (module docstring); [] when it looks fine."""
    out = []
    if not psnr_test >= DENSE_PSNR_MIN_DB:
        out.append(f"warning: the dense model reaches only {psnr_test:.2f} dB on the test views (below "
                   f"{DENSE_PSNR_MIN_DB:.0f} dB): every level inherits this; fit longer or check the model/cameras")
    if psnr_train - psnr_test > DENSE_PSNR_MAX_GAP_DB:
        out.append(f"warning: the dense model's test PSNR {psnr_test:.2f} dB is {psnr_train - psnr_test:.1f} dB below "
                   f"its training PSNR {psnr_train:.2f} dB (more than {DENSE_PSNR_MAX_GAP_DB:.0f} dB): misaligned "
                   "cameras (a model in a normalized frame?) or an over-fitted scene")
    return out


def level_test_psnr(level_file: str | Path, scene: SourceScene, backend: str = "auto",
                    device: str | None = None) -> float:
    """Mean test-view PSNR of a level as it is stored: the written file is decoded and rendered."""
    return model_psnr(codec.read_level(level_file), scene, "test", backend, device)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def synthesize_scene(scene_dir: str | Path, out_dir: str | Path, settings: SynthesisSettings | None = None,
                     ply: str | Path | None = None, progress: bool = True, overwrite: bool = False,
                     log: Callable[[str], None] = print, transforms: str | Path | None = None,
                     warn: Callable[[str], None] = _stderr) -> dict:
    """Build ``out_dir/{full.ply, level_<l>.nifigs, synth.json}`` from a scene folder (module docstring).

    The dense model is ``ply`` (any format of :mod:`nifi_lib.data.pretrained`: a 3DGS PLY, an INRIA output
    folder, a nerfstudio splatfacto export, a gsplat checkpoint; ``transforms``: the frame transform to undo),
    else the scene's own (an INRIA output's PLY, ``<scene>/point_cloud.ply``), else fitted with ``fit_iterations``.
    Importance (GoDe) is computed once on the dense model over the training views; level l keeps the
    top ``|G_l|`` primitives (so G_0 < G_1 < G_2 are nested), is fine-tuned for ``finetune_iterations``
    and coded into ``level_<l>.nifigs``. An existing complete output with the same settings is reused
    unless ``overwrite``.
    """
    from ..data.pretrained import load_pretrained
    from ..data.scenes import scene_pretrained_model
    from ..gs.model import save_ply

    s = settings or SynthesisSettings()
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    labels = s.labels()
    # 1. validate everything before writing anything
    scene = open_scene(scene_dir, background=s.background, downscale=s.downscale, require_cameras=True)
    dev = _device(s.device)
    train_views, test_views = scene.views("train"), scene.views("test")
    if not train_views:
        raise SceneError(f"{scene.root}: no training views")
    check_images(scene, test_views, progress, "check test images")
    train_imgs = scene.load_images(train_views)
    train_cams = [v.camera for v in train_views]
    ply_path = Path(ply) if ply is not None else scene_pretrained_model(scene.root, scene.format)
    full, model_info = load_pretrained(ply_path, transforms) if ply_path is not None else (None, None)
    if full is not None:
        sizes = level_sizes(full.num_gaussians, s.c_min, s.num_levels, s.n_top)
    settings_key = {k: v for k, v in asdict(s).items() if k not in ("backend", "device")}
    settings_key["ply"] = display_path(ply_path)
    if transforms is not None:
        settings_key["ply_transforms"] = display_path(transforms)
    existing = synth_complete(out_dir)
    if existing is not None and not overwrite and existing.get("settings") == json.loads(json.dumps(settings_key)):
        log(f"{out_dir}: complete synthesis with the same settings found, skipping (use --overwrite to redo)")
        for w in existing.get("warnings", []):
            warn(w)
        return existing
    # 2. dense model
    fit_info = None
    if full is None:
        log(f"{scene.name}: no pretrained PLY; fitting a dense 3DGS for {s.fit_iterations} iterations")
        t0 = time.perf_counter()
        from ..data.scenes import load_scene_points

        points = load_scene_points(scene.root, scene.format)
        full, hist = _fit_full(train_cams, train_imgs, s.fit_iterations, s, scene.background, progress, points)
        full = full.detach().to("cpu")
        fit_info = {"iterations": s.fit_iterations, "seconds": time.perf_counter() - t0,
                    "init": f"{len(points[0])} scene points" if points is not None else "random"}
        losses = hist.get("loss") if isinstance(hist, dict) else getattr(hist, "loss", None)
        if losses:
            fit_info["final_loss"] = float(losses[-1])
        sizes = level_sizes(full.num_gaussians, s.c_min, s.num_levels, s.n_top)
    full.validate(str(ply_path) if ply_path else "fitted model")
    full_dev, train_imgs = full.to(dev), train_imgs.to(dev)
    # 2b. how good is the dense model? (every level inherits it; warn before anything is made from it)
    full_psnr_train = model_psnr(full_dev, scene, "train", s.backend, s.device)
    full_psnr_test = model_psnr(full_dev, scene, "test", s.backend, s.device)
    log(f"{scene.name}: dense model ({full.num_gaussians} Gaussians): PSNR {full_psnr_train:.2f} dB on the "
        f"{len(train_views)} training views, {full_psnr_test:.2f} dB on the {len(test_views)} test views")
    quality_warnings = dense_quality_warnings(full_psnr_train, full_psnr_test)
    for w in quality_warnings:
        warn(w)
    # 3. importance on the dense model
    t0 = time.perf_counter()
    pick = _subsample(len(train_views), s.importance_views)
    importance = gode_importance(full_dev, [train_cams[i] for i in pick], train_imgs[pick], background=scene.background,
                                 backend=s.backend, progress=progress)
    imp_info = {"views": len(pick), "loss": "mean L1", "seconds": time.perf_counter() - t0,
                "zero_fraction": float((importance == 0).double().mean())}
    # 4. prune, fine-tune, code (inside the staging folder)
    levels = []
    with staged_directory(out_dir, keep=False) as stage:
        save_ply(full, stage / FULL_PLY)
        for l, (k, label) in enumerate(zip(sizes, labels)):
            t0 = time.perf_counter()
            pruned, kept = prune_top_k(full_dev, importance, k)
            plan, quantizer = _level_codec(s, pruned)
            tuned, hist = finetune(pruned, train_cams, train_imgs, s.finetune_iterations, background=scene.background,
                                   backend=s.backend, seed=s.seed + l, progress=progress, desc=f"fine-tune level {l}",
                                   quantizer=quantizer)
            tuned = tuned.subset(morton_order(tuned).to(tuned.device))  # render-invariant; helps the coder
            stats = codec.write_level(tuned, stage / level_filename(l), version=s.codec_version, settings=plan,
                                      budget_bytes_per_gaussian=s.budget_bytes_per_gaussian)
            psnr_test_float = model_psnr(tuned, scene, "test", s.backend, s.device)   # the level before coding
            psnr_test = level_test_psnr(stage / level_filename(l), scene, s.backend, s.device)
            levels.append({"level": l, "label": label, "num_gaussians": k, "file": level_filename(l),
                           **stats.to_dict(), "psnr_test": psnr_test, "psnr_test_float": psnr_test_float,
                           "qat": quantizer is not None, "finetune_iterations": s.finetune_iterations,
                           "finetune_final_loss": hist["loss"][-1] if hist["loss"] else None,
                           "seconds": time.perf_counter() - t0})
            log(f"{scene.name}: level {l} (rate {label}): {k} Gaussians, {stats.bytes} B on disk "
                f"({stats.bytes / 1e6:.3f} MB; raw 8-bit {stats.raw_8bit_bytes} B, zlib {stats.zlib_bytes} B, "
                f"lzma {stats.lzma_bytes} B), test PSNR {psnr_test_float:.2f} dB before coding, {psnr_test:.2f} dB decoded")
        full_bytes = (stage / FULL_PLY).stat().st_size
        meta = {
            "format_version": 1, "scene": scene.name, "source": display_path(scene.root), "source_format": scene.format,
            "background": list(scene.background), "full_ply": FULL_PLY, "full_ply_bytes": full_bytes,
            "full_source": display_path(ply_path) if ply_path else "fitted", "fit": fit_info,
            "full_source_format": model_info["format"] if model_info else "fitted",
            "full_psnr_train": full_psnr_train, "full_psnr_test": full_psnr_test,
            "psnr_views": {"train": len(train_views), "test": len(test_views)}, "warnings": quality_warnings,
            "num_gaussians_full": full.num_gaussians, "sh_degree": full.sh_degree,
            "schedule": {"c_min": s.c_min, "num_levels": s.num_levels, "n_top": sizes[-1],
                         "n_top_reading": "size of the largest pruned level (default N // 4 of the full model)",
                         "sizes": sizes, "labels": labels},
            "importance": imp_info, "levels": levels, "settings": settings_key,
            "seconds": time.perf_counter() - t_start, "complete": True,
        }
        atomic_write_json(stage / SYNTH_JSON, meta)
    return meta


# --- pairs ---------------------------------------------------------------------------------------------

@dataclass
class LevelSource:
    """One rate of a pair set: manifest fields and how to make the degraded image of a view."""

    level: int | None
    label: str
    info: dict
    degrade: Callable[[View, torch.Tensor, str], torch.Tensor]   # (view, clean image, split) -> degraded
    psnr_split: str = "test"


def pairs_scene_dir(out: str | Path, split: str | None = None) -> Path:
    """``--out`` of ``nifi pairs`` -> the scene's pair folder ``pairs/<scene>/``.

    ``--out`` names the scene's pair folder; a trailing ``train``/``test``/``all`` component is dropped,
    so the seed's ``--out pairs/garden/train/`` and ``--out pairs/garden/`` both write
    ``pairs/garden/rate_<label>/<split>/{clean,degraded}/``.
    """
    out = Path(out)
    return out.parent if out.name in SPLITS else out


def write_scene_pairs(scene: SourceScene, scene_dir: Path, split: str, mode: str, levels: Sequence[LevelSource],
                      header: dict, identity: dict, progress: bool = True) -> dict:
    """Write the pairs of ``split`` for every level into ``scene_dir`` (staged) and merge the manifest."""
    views = scene.views(split)
    if not views:
        raise SceneError(f"{scene.root}: split '{split}' has no views")
    old = read_manifest(scene_dir) if scene_dir.is_dir() else None
    keep = old is not None and old.get("mode") == mode and old.get("identity") == identity
    drop = tuple(f"rate_{lv.label}/{split}" for lv in levels) + (MANIFEST,)
    new_levels = []
    with staged_directory(scene_dir, keep=keep, drop=drop) as stage:
        for lv in levels:
            scores = []
            for v in tqdm(views, desc=f"{scene.name} rate {lv.label} {split}", disable=not progress, leave=False):
                clean = scene.load_images([v])[0]
                deg = lv.degrade(v, clean, split)
                write_pair(stage, lv.label, split, v.name, clean, deg)
                if lv.psnr_split == split:
                    scores.append(psnr(deg.clamp(0, 1), clean))
            if lv.psnr_split != split:
                for v in tqdm(scene.views(lv.psnr_split), desc=f"{scene.name} rate {lv.label} psnr", disable=not progress,
                              leave=False):
                    clean = scene.load_images([v])[0]
                    scores.append(psnr(lv.degrade(v, clean, lv.psnr_split).clamp(0, 1), clean))
            new_levels.append({"level": lv.level, "label": lv.label, **lv.info, "psnr": mean_psnr(scores),
                               "psnr_split": lv.psnr_split, "psnr_views": len(scores)})
        manifest = dict(header)
        manifest.update({"scene": scene.name, "mode": mode, "proxy": mode == "proxy", "identity": identity,
                         "splits": {**((old or {}).get("splits", {}) if keep else {}), split: len(views)},
                         "levels": merge_levels((old or {}).get("levels", []) if keep else [], new_levels)})
        write_manifest(stage, manifest)
    return manifest


def codec_pairs(artifact_dir: str | Path, split: str, out: str | Path, backend: str = "auto",
                progress: bool = True, overwrite: bool = False, log: Callable[[str], None] = print,
                device: str | None = None, downscale: int | None = None) -> dict:
    """``nifi pairs``: decode every level of ``artifact_dir``, render ``split``, write pairs + manifest.

    ``downscale``: render at the scene's ``images_<d>/`` views (default: the resolution of the synthesis)."""
    from ..gs.render import render

    artifact_dir = Path(artifact_dir)
    meta, problem = _read_synth(artifact_dir)
    if meta is None:
        raise SynthesisError(f"{artifact_dir}: not a complete synthesis ({problem}); run `nifi synthesize "
                             f"--scene <scene folder> --out {artifact_dir} --overwrite` first")
    scene_dir = pairs_scene_dir(out, split)
    labels = [lv["label"] for lv in meta["levels"]]
    identity = {"artifacts": display_path(artifact_dir),
                "synth_sha256": sha256_file(artifact_dir / SYNTH_JSON)[:16]}
    synth_downscale = meta.get("settings", {}).get("downscale")
    if downscale is not None and downscale != synth_downscale:
        identity["downscale"] = downscale
    else:
        downscale = synth_downscale
    old = read_manifest(scene_dir) if scene_dir.is_dir() else None
    if (not overwrite and old is not None and old.get("identity") == identity
            and manifest_complete(scene_dir, labels, [split], mode="nifi-codec")):
        log(f"{scene_dir}: pairs of split '{split}' are complete, skipping (use --overwrite to redo)")
        return old
    scene = open_scene(repo_path(meta["source"]), name=meta["scene"], background=meta["background"],
                       downscale=downscale, require_cameras=True)
    views = scene.views(split)
    check_images(scene, views + (scene.views("test") if split != "test" else []), progress)
    dev = _device(device)
    models = {lv["label"]: codec.read_level(artifact_dir / lv["file"]).to(dev)  # decoding validates the files
              for lv in meta["levels"]}
    bg = scene.background

    def make(label: str):
        model = models[label]

        def degrade(v: View, clean: torch.Tensor, _split: str) -> torch.Tensor:
            with torch.no_grad():
                return render(model, v.camera, backend=backend, background=bg).image.clamp(0, 1).cpu()
        return degrade

    levels = [LevelSource(lv["level"], lv["label"],
                          {"num_gaussians": lv["num_gaussians"], "file": display_path(artifact_dir / lv["file"]),
                           "bytes": (artifact_dir / lv["file"]).stat().st_size,
                           "mb": (artifact_dir / lv["file"]).stat().st_size / 1e6},
                          make(lv["label"])) for lv in sorted(meta["levels"], key=lambda d: -d["level"])]
    header = {"num_gaussians_full": meta["num_gaussians_full"], "artifacts": display_path(artifact_dir),
              "full_ply_bytes": meta.get("full_ply_bytes"), "source": meta["source"]}
    manifest = write_scene_pairs(scene, scene_dir, split, "nifi-codec", levels, header, identity, progress)
    log(f"{scene_dir}: wrote {len(views)} pairs x {len(levels)} rates for split '{split}'")
    return manifest


def _levels_for_labels(labels: Sequence[str]) -> list[tuple[int, str]]:
    """(level, label), level 0 = largest lambda (lowest rate), listed largest level first."""
    ordered = rate_labels(len(labels), list(labels))  # index = level
    return [(l, ordered[l]) for l in reversed(range(len(ordered)))]


def proxy_pairs(scene_root: str | Path, scene_dir: str | Path, rates: Sequence[str], split: str,
                progress: bool = True, downscale: int | None = None, name: str | None = None) -> dict:
    """Proxy-mode pairs (:mod:`nifi_lib.synthesis.proxy`): strength = the rate label as a number."""
    scene = open_scene(scene_root, name=name, downscale=downscale)
    check_images(scene, scene.views(split) + (scene.views("test") if split != "test" else []), progress)

    def make(label: str):
        def degrade(v: View, clean: torch.Tensor, _split: str) -> torch.Tensor:
            return proxy_degrade(clean, float(label), proxy_seed(scene.name, v.name, label))
        return degrade

    levels = [LevelSource(l, lab, {"num_gaussians": None, "file": None, "bytes": None, "mb": None}, make(lab))
              for l, lab in _levels_for_labels(rates)]
    header = {"num_gaussians_full": None, "note": PROXY_NOTE, "source": display_path(scene.root)}
    return write_scene_pairs(scene, Path(scene_dir), split, "proxy", levels, header, {"proxy_version": 1}, progress)


def precomputed_pairs(scene_root: str | Path, scene_dir: str | Path, rates: Sequence[str], split: str,
                      compressed_root: str | Path, progress: bool = True, downscale: int | None = None,
                      name: str | None = None) -> dict:
    """Pairs from an external codec's renders (layout in :mod:`nifi_lib.synthesis.precomputed`)."""
    from ..io.images import load_image

    scene = open_scene(scene_root, name=name, downscale=downscale)
    views = scene.views(split)
    matched, psnr_split = {}, {}
    for _, label in _levels_for_labels(rates):
        matched[(label, split)] = match_renders(compressed_root, scene.name, label, split, [v.name for v in views])
        psnr_split[label] = split
        if split != "test" and precomputed_folder(compressed_root, scene.name, label, "test").is_dir():
            matched[(label, "test")] = match_renders(compressed_root, scene.name, label, "test",
                                                     [v.name for v in scene.views("test")])
            psnr_split[label] = "test"
    # validate: every clean image and every render decodes, sizes agree
    for (label, sp), files in matched.items():
        for v in tqdm(scene.views(sp), desc=f"check {label} {sp}", disable=not progress, leave=False):
            clean = scene.load_images([v])[0]
            deg = load_image(files[v.name], allow_convert=True)
            if deg.shape != clean.shape:
                raise PrecomputedError(f"{files[v.name]}: render is {deg.shape[2]}x{deg.shape[1]}, the clean view "
                                       f"{v.image_path} is {clean.shape[2]}x{clean.shape[1]}")

    def make(label: str):
        def degrade(v: View, clean: torch.Tensor, sp: str) -> torch.Tensor:
            return load_image(matched[(label, sp)][v.name], allow_convert=True)
        return degrade

    levels = [LevelSource(l, lab, {"num_gaussians": None, "file": None, "bytes": None, "mb": None}, make(lab),
                          psnr_split[lab]) for l, lab in _levels_for_labels(rates)]
    header = {"num_gaussians_full": None, "compressed_root": display_path(compressed_root),
              "source": display_path(scene.root)}
    identity = {"compressed_root": display_path(compressed_root)}
    return write_scene_pairs(scene, Path(scene_dir), split, "precomputed", levels, header, identity, progress)


# --- benchmark ------------------------------------------------------------------------------------------

def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if shard is None:
        return 0, 1
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError as e:
        raise SynthesisError(f"--shard '{shard}' must look like i/n (e.g. 0/4)") from e
    if n < 1 or not 0 <= i < n:
        raise SynthesisError(f"--shard '{shard}': need 0 <= i < n")
    return i, n


def prepare_benchmark(dataset: str, dataset_root: str | Path, out: str | Path, rates: Sequence[str], method: str,
                      compressed_root: str | Path | None = None, shard: str | None = None, split: str = "test",
                      downscale: int | None = None, settings: SynthesisSettings | None = None,
                      artifacts_root: str | Path = "artifacts/benchmarks", progress: bool = True,
                      overwrite: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Pairs for every scene of ``dataset_root`` into ``<out>/<dataset>/<scene>/`` (resumable per scene).

    ``method``: ``proxy``, ``precomputed`` (needs ``compressed_root``) or ``nifi-codec`` (synthesizes
    ``<artifacts_root>/<dataset>/<scene>/`` first). Scenes whose manifest already lists every rate and the
    split with all files are skipped. ``shard = "i/n"`` processes scenes ``i, i + n, ...`` (sorted by name).
    ``downscale`` None: per scene the 3DGS convention (:func:`nifi_lib.data.registry.default_downscale`:
    Mip-NeRF360 outdoor ``images_4``, indoor ``images_2``, else ``images/``); a number applies to every scene.
    """
    if method not in MODES:
        raise SynthesisError(f"unknown compression method {method!r} (one of {', '.join(MODES)})")
    if method == "precomputed" and compressed_root is None:
        raise SynthesisError("--compression_method precomputed needs --compressed_root")
    if split not in SPLITS:
        raise SynthesisError(f"unknown split {split!r}")
    labels = [lab for _, lab in _levels_for_labels(rates)]
    i, n = parse_shard(shard)
    from ..data.registry import default_downscale

    scenes = find_scenes(dataset_root, downscale)[i::n]
    results = []
    given_downscale = downscale
    for root in tqdm(scenes, desc=f"{dataset} scenes", disable=not progress):
        downscale = given_downscale if given_downscale is not None else default_downscale(dataset, root.name)
        scene_dir = Path(out) / dataset / root.name
        if not overwrite and manifest_complete(scene_dir, labels, [split], mode=method):
            log(f"{scene_dir}: complete, skipping")
            results.append({"scene": root.name, "status": "skipped"})
            continue
        t0 = time.perf_counter()
        if method == "proxy":
            proxy_pairs(root, scene_dir, rates, split, progress, downscale)
        elif method == "precomputed":
            precomputed_pairs(root, scene_dir, rates, split, compressed_root, progress, downscale)
        else:
            s = settings or SynthesisSettings()
            s.rates, s.num_levels, s.downscale = list(rates), len(rates), downscale
            art = Path(artifacts_root) / dataset / root.name
            synthesize_scene(root, art, s, progress=progress, overwrite=overwrite, log=log)
            codec_pairs(art, split, scene_dir, backend=s.backend, progress=progress, overwrite=True, log=log,
                        device=s.device)
        results.append({"scene": root.name, "status": "done", "downscale": downscale,
                        "seconds": time.perf_counter() - t0})
        log(f"{scene_dir}: done in {time.perf_counter() - t0:.1f} s")
    return results


# --- evaluation helpers (notebook) --------------------------------------------------------------------------

def render_views(model, scene: SourceScene, views: Sequence[View], backend: str = "auto",
                 device: str | None = None, progress: bool = False) -> dict[str, torch.Tensor]:
    """``{view name: (3, H, W) render in [0, 1] on CPU}`` of ``model`` at ``views`` (scene background)."""
    from ..gs.render import render

    dev = _device(device)
    m = model.to(dev)
    out = {}
    with torch.no_grad():
        for v in tqdm(views, desc="render", disable=not progress, leave=False):
            out[v.name] = render(m, v.camera, backend=backend, background=scene.background).image.clamp(0, 1).cpu()
    return out


def model_psnr(model, scene: SourceScene, split: str = "test", backend: str = "auto", device: str | None = None,
               progress: bool = False) -> float:
    """Mean PSNR (8-bit, as the pair PNGs) of ``model``'s renders against the ground truth of ``split``."""
    views = scene.views(split)
    renders = render_views(model, scene, views, backend, device, progress)
    return mean_psnr([psnr(renders[v.name], scene.load_images([v])[0]) for v in views])
