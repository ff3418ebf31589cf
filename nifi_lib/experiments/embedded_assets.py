"""``nifi embedded-assets``: rebuild the embedded default's assets from scratch (issue 17; docs/embedded_assets.md).

Six resumable stages, each a call to the function that already does it:

1. ``frames``: :func:`~nifi_lib.gs.scene_presets.build_preset` with ``frames_only``: the ground truth of every
   world (seconds a world), which is all the prior needs;
2. ``scenes``: :func:`~nifi_lib.gs.scene_presets.build_preset` -> ``<out>/scenes/{train,heldout}/<name>/``
   (the 3DGS fits; frames already rendered are left untouched);
3. ``prior``: :func:`~nifi_lib.diffusion.prior.train_prior` on the training scenes' train views (held out:
   their test views and every view of the held-out scenes) -> ``<out>/prior/`` (the backbone folder);
4. ``decoder`` (only when the config has a ``decoder`` section): :func:`~nifi_lib.diffusion.prior.finetune_decoder`,
   a decoder-only VAE fine-tune of ``<out>/prior`` (the prior config with the section's ``overrides`` on top,
   e.g. the adversarial term) on the same images -> ``<out>/prior_decoder/``, the backbone the NiFi stages
   then train on (the encoder, latent scale and transformer are ``<out>/prior``'s, unchanged);
5. ``pairs``: :func:`~nifi_lib.experiments.embedded.scene_pairs` (synthesis + pairs: training scenes, and the
   preset's ``paired_prior_worlds``, into ``<out>/pairs``, held-out scenes into ``<out>/pairs_heldout``);
6. ``nifi``: :func:`~nifi_lib.experiments.embedded.run_training` of ``configs/embedded.yaml`` pointed at
   the backbone (``<out>/prior``, or ``<out>/prior_decoder`` after a ``decoder`` stage) -> ``<out>/nifi_run/``;
   ``best.pt``, ``train_log.csv``, ``train_summary.json`` and the resolved config are copied into ``<out>/nifi/``;
7. ``nifi_wo_t0``: the same run with ``diffusion.t0: 1000`` (the ablation, trained as it is evaluated) ->
   ``<out>/nifi_wo_t0/``;
8. ``evaluate`` (only when the config has an ``evaluate`` section): :func:`stage_evaluate`, the held-out table
   and sharpness (and optionally the validation views') -> ``<out>/evaluation/``.

``<out>/assets_log.json`` records each finished stage (seconds, outputs relative to ``<out>`` with their sizes
in bytes, the command line) and the assets config; a stage recorded there with the same config is skipped by ``--resume``
(without it, every requested stage runs again). Since the prior needs the frames and not the fits, two processes
can share one GPU: ``--stage frames,prior`` beside ``--stage scenes,pairs``, then ``--stage nifi`` beside
``--stage nifi_wo_t0`` (scripts/device_session.sh); each stage's entry is merged into the log as it is on disk at
that moment. The assets config is a YAML (``configs/embedded_assets_v3.yaml``, the GPU rebuild; ``configs/embedded_assets_tiny.yaml``, the same chain in about a minute on the CPU).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..paths import repo_path

STAGES = ("frames", "scenes", "prior", "decoder", "pairs", "nifi", "nifi_wo_t0", "evaluate")
V3_CONFIG = "configs/embedded_assets_v3.yaml"
TINY_CONFIG = "configs/embedded_assets_tiny.yaml"
LOG_NAME = "assets_log.json"
SECTIONS = {"scenes": {"preset", "seed", "overrides"}, "prior": {"config", "overrides"},
            "synthesis": {"c_min", "n_top", "finetune_iterations"}, "nifi": {"config", "overrides"}}
OPTIONAL_SECTIONS = {"decoder": {"overrides"}, "evaluate": {"metrics", "methods", "validation"}}
EVAL_DIR = "evaluation"
EVAL_METHODS = ("none", "img2img", "base_t0", "nifi_wo_t0", "nifi")
DECODER_DIR = "prior_decoder"


class AssetsError(NifiError):
    pass


def load_assets_config(path: str | Path) -> dict:
    """The assets YAML, checked: sections ``scenes``, ``prior``, ``synthesis``, ``nifi`` (and optionally
    ``decoder``) with known keys only."""
    import yaml

    path = repo_path(path)
    if not path.is_file():
        raise AssetsError(f"{path}: assets config not found")
    data = yaml.safe_load(path.read_text()) or {}
    for sec, keys in {**SECTIONS, **OPTIONAL_SECTIONS}.items():
        if sec in OPTIONAL_SECTIONS and sec not in data:
            continue
        if not isinstance(data.get(sec), dict):
            raise AssetsError(f"{path}: missing section '{sec}'")
        unknown = set(data[sec]) - keys
        if unknown:
            raise AssetsError(f"{path}: unknown keys {sorted(unknown)} in '{sec}' (known: {sorted(keys)})")
    extra = set(data) - set(SECTIONS) - set(OPTIONAL_SECTIONS)
    if extra:
        raise AssetsError(f"{path}: unknown sections {sorted(extra)}")
    return data


def _fingerprint(section: dict) -> str:
    return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sizes(paths: list[Path], root: Path) -> dict:
    """``{path relative to root: bytes}`` (a folder: the sum of its files)."""
    out = {}
    for p in paths:
        out[_rel(p, root)] = (sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir()
                              else p.stat().st_size)
    return out


def _rel(p: Path, root: Path) -> str:
    """Outputs are logged relative to the output folder, so a log stays valid when the folder moves (the
    GPU runs one stage per call on a fresh machine and the folder travels between them)."""
    return str(Path(p).relative_to(root))


def _scene_dirs(out: Path, group: str) -> list[Path]:
    root = out / "scenes" / group
    return sorted(p for p in root.iterdir() if (p / "cameras.json").is_file()) if root.is_dir() else []


def stage_scenes(cfg: dict, out: Path, device: str, progress: bool, frames_only: bool = False) -> list[Path]:
    from ..gs.scene_presets import build_preset

    sc = cfg["scenes"]
    backend = "auto" if device.startswith("cuda") else "torch"
    build_preset(sc["preset"], out / "scenes", seed=int(sc.get("seed", 0)), progress=progress, device=device,
                 backend=backend, frames_only=frames_only, **(sc.get("overrides") or {}))
    return [out / "scenes"]


def stage_frames(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    """The ground truth of every world, no 3DGS fit (:func:`stage_scenes` with ``frames_only``)."""
    return stage_scenes(cfg, out, device, progress, frames_only=True)


def prior_config(cfg: dict, section: str = "prior"):
    """The PriorConfig of the ``prior`` stage; ``section="decoder"``: with the decoder section's overrides on top."""
    from ..diffusion.prior import load_prior_config

    overrides = dict(cfg["prior"].get("overrides") or {})
    if section != "prior":
        overrides.update(cfg[section].get("overrides") or {})
    return load_prior_config(repo_path(cfg["prior"]["config"]), **overrides)


def prior_images(out: Path) -> tuple[list[Path], list[Path]]:
    """The prior's training images (the training worlds' train views and every view of the prior-only worlds)
    and its held-out images (the training worlds' test views and every view of the held-out worlds)."""
    from ..data.scenes import load_scene
    from ..gs.scene_presets import PRIOR_ONLY

    train = ([c.image_path for s in _scene_dirs(out, "train") for c in load_scene(s, split="train")]
             + [c.image_path for s in _scene_dirs(out, PRIOR_ONLY) for c in load_scene(s, split="all")])
    heldout = ([c.image_path for s in _scene_dirs(out, "train") for c in load_scene(s, split="test")]
               + [c.image_path for s in _scene_dirs(out, "heldout") for c in load_scene(s, split="all")])
    if not train:
        raise AssetsError(f"{out / 'scenes'}: no training scenes (run the scenes stage first)")
    return train, heldout


def stage_prior(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    from ..diffusion.prior import train_prior

    train, heldout = prior_images(out)
    train_prior(train, out / "prior", prior_config(cfg), progress=progress, device=device, heldout_sources=heldout)
    return [out / "prior"]


def stage_decoder(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    """The decoder-only fine-tune of ``<out>/prior`` -> ``<out>/prior_decoder`` (:func:`build_assets` runs it
    only when the config has a ``decoder`` section; without one the NiFi stages train on ``<out>/prior``)."""
    from ..diffusion.prior import finetune_decoder

    if not (out / "prior" / "prior_log.json").is_file():
        raise AssetsError(f"{out / 'prior'}: no prior to fine-tune (run the prior stage first)")
    train, heldout = prior_images(out)
    finetune_decoder(out / "prior", train, out / DECODER_DIR, prior_config(cfg, "decoder"), progress=progress,
                     device=device, heldout_sources=heldout)
    return [out / DECODER_DIR]


def backbone_dir(cfg: dict, out: Path) -> Path:
    """The backbone the NiFi stages train on: ``<out>/prior_decoder`` when the config fine-tunes the decoder."""
    return out / (DECODER_DIR if "decoder" in cfg else "prior")


def nifi_config(cfg: dict, out: Path, extra: dict | None = None):
    from ..config import load_config, merge_overrides

    prior = backbone_dir(cfg, out)
    model = {"model": {"backbone": str(prior), "embeddings": str(prior / "prompt_embeds.npz")}}
    overrides = merge_overrides(merge_overrides(cfg["nifi"].get("overrides") or {}, extra or {}), model)
    return load_config(repo_path(cfg["nifi"]["config"]), overrides=overrides)


def paired_scene_dirs(cfg: dict, out: Path) -> list[Path]:
    """The worlds NiFi trains on: the training worlds and the preset's ``paired_prior_worlds`` (prior-only worlds
    that are fitted too, :func:`~nifi_lib.gs.scene_presets.paired_prior_names`)."""
    from ..gs.scene_presets import PRIOR_ONLY, get_preset, paired_prior_names

    sc = cfg["scenes"]
    extra = [out / "scenes" / PRIOR_ONLY / n for n in paired_prior_names(get_preset(sc["preset"],
                                                                                       **(sc.get("overrides") or {})))]
    missing = [p for p in extra if not (p / "point_cloud.ply").is_file()]
    if missing:
        raise AssetsError(f"{missing[0]}: a paired prior-only world without its 3DGS fit (run the scenes stage)")
    return _scene_dirs(out, "train") + extra


def stage_pairs(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    """Synthesis + pairs: the training worlds (and the paired prior-only worlds) into ``<out>/pairs``, the
    held-out world into ``<out>/pairs_heldout``."""
    from .embedded import scene_pairs

    syn = {k: int(v) for k, v in cfg["synthesis"].items()}
    syn_device = "cuda" if device.startswith("cuda") else "cpu"
    pairs = scene_pairs(paired_scene_dirs(cfg, out), out / "artifacts", out / "pairs", device=syn_device,
                        progress=progress, **syn)
    held = scene_pairs(_scene_dirs(out, "heldout"), out / "artifacts", out / "pairs_heldout", device=syn_device,
                       progress=progress, splits=("test",), **syn)
    return [pairs, held]


def _train_variant(out: Path, device: str, progress: bool, name: str, ncfg) -> list[Path]:
    import yaml

    from .embedded import run_training

    pairs = out / "pairs" / "embedded"
    if not pairs.is_dir():
        raise AssetsError(f"{pairs}: no training pairs (run the pairs stage first)")
    best = run_training(ncfg, pairs, out / f"{name}_run", progress=progress, device=device)
    ship = out / name
    ship.mkdir(parents=True, exist_ok=True)
    for f in (best, best.parent / "train_log.csv", best.parent / "train_summary.json"):
        shutil.copy2(f, ship / f.name)
    (ship / "config.yaml").write_text(yaml.safe_dump(ncfg.to_dict(), sort_keys=False))
    return [ship / "best.pt", ship / "train_log.csv", ship / "train_summary.json", ship / "config.yaml"]


def stage_nifi(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    """NiFi (``configs/embedded.yaml`` on the new prior) -> ``<out>/nifi/``."""
    return _train_variant(out, device, progress, "nifi", nifi_config(cfg, out))


def stage_nifi_wo_t0(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    """The "NiFi w/o t0" ablation trained the way it is evaluated (``diffusion.t0: 1000``), otherwise NiFi's run
    -> ``<out>/nifi_wo_t0/``."""
    return _train_variant(out, device, progress, "nifi_wo_t0", nifi_config(cfg, out, {"diffusion": {"t0": 1000}}))


def stage_evaluate(cfg: dict, out: Path, device: str, progress: bool) -> list[Path]:
    """The rebuild's own scores (only when the config has an ``evaluate`` section): ``nifi benchmark`` of the
    methods notebook 07 compares (:data:`EVAL_METHODS`, or the section's ``methods``) with the section's
    ``metrics`` and :func:`~.ablations.ablation_sharpness` (high-frequency ratio and patch grid per rate), on the
    held-out world's test pairs (``<out>/pairs_heldout``) and, with ``validation: true``, on the NiFi worlds' test
    views (``<out>/pairs``: unseen by NiFi's training, whose validation is every 8th train view) ->
    ``<out>/evaluation/{heldout,validation}_{benchmark,sharpness}.json``."""
    from ..diffusion.backbone import patch_stride
    from ..evaluation.benchmark import run_benchmark
    from .ablations import ablation_sharpness

    sec = cfg["evaluate"]
    ckpt, wo = out / "nifi" / "best.pt", out / "nifi_wo_t0" / "best.pt"
    if not ckpt.is_file():
        raise AssetsError(f"{ckpt}: no NiFi checkpoint to evaluate (run the nifi stage first)")
    methods = [m for m in (sec.get("methods") or EVAL_METHODS) if m != "nifi_wo_t0" or wo.is_file()]
    bb = backbone_dir(cfg, out)
    opts = {"base_model": str(bb), "embeddings": str(bb / "prompt_embeds.npz"),
            "device": "cuda" if device.startswith("cuda") else "cpu"}
    wo_opt = {"ckpt_wo_t0": str(wo)} if wo.is_file() else {}
    sets = [("heldout", out / "pairs_heldout")] + ([("validation", out / "pairs")] if sec.get("validation") else [])
    folder = out / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, root in sets:
        bench = folder / f"{name}_benchmark.json"
        run_benchmark(root, split="test", out=bench, methods=methods, ckpt=str(ckpt),
                      metric_names=list(sec.get("metrics") or ("lpips", "psnr", "ssim")), progress=progress,
                      **opts, **wo_opt)
        sharp = ablation_sharpness(root / "embedded", str(ckpt), str(bb), stride=patch_stride(str(bb)), split="test",
                                   embeddings=opts["embeddings"], device=opts["device"], **wo_opt)
        atomic_write_json(folder / f"{name}_sharpness.json", sharp)
        written += [bench, folder / f"{name}_sharpness.json"]
    return written


RUNNERS = {"frames": stage_frames, "scenes": stage_scenes, "prior": stage_prior, "decoder": stage_decoder,
           "pairs": stage_pairs, "nifi": stage_nifi, "nifi_wo_t0": stage_nifi_wo_t0, "evaluate": stage_evaluate}


def read_log(out: Path) -> dict:
    try:
        return json.loads((out / LOG_NAME).read_text())
    except (OSError, ValueError):
        return {"stages": {}}


def stage_key(cfg: dict, stage: str) -> str:
    """What a finished stage depends on: its own section and every earlier stage's (an absent ``decoder``
    section leaves the keys as they were before that stage existed)."""
    nifi = ["scenes", "prior", "decoder", "synthesis", "nifi"]
    upto = {"frames": ["scenes"], "scenes": ["scenes"], "prior": ["scenes", "prior"],
            "decoder": ["scenes", "prior", "decoder"], "pairs": ["scenes", "synthesis"], "nifi": nifi, "nifi_wo_t0": nifi,
            "evaluate": nifi + ["evaluate"]}
    return _fingerprint({s: cfg[s] for s in upto[stage] if s in cfg})


def build_assets(out: str | Path, config: str | Path = V3_CONFIG, stages: tuple[str, ...] = STAGES,
                 device: str | None = None, resume: bool = False, progress: bool = True,
                 command: list[str] | None = None) -> dict:
    """Run ``stages`` (in pipeline order) into ``out``; returns the log written to ``<out>/assets_log.json``."""
    import torch

    from ..devices import default_device

    device = device or default_device()
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise AssetsError(f"unknown stages {sorted(unknown)}; stages: {list(STAGES)}")
    cfg = load_assets_config(config)
    out = repo_path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = read_log(out)
    log.update({"config_file": str(config), "config": cfg, "device": device, "torch": torch.__version__})
    log.setdefault("stages", {})
    ran, skipped = [], []
    for stage in STAGES:
        if stage not in stages or (stage in OPTIONAL_SECTIONS and stage not in cfg):   # no section: nothing to run
            continue
        key = stage_key(cfg, stage)
        done = log["stages"].get(stage)
        if resume and done and done.get("key") == key and all((out / p).exists() for p in done["outputs"]):
            skipped.append(stage)
            continue
        ran.append(stage)
        t0 = time.perf_counter()
        outputs = RUNNERS[stage](cfg, out, device, progress)
        log["stages"] = read_log(out).get("stages", {})   # what another process's stages wrote meanwhile
        log["stages"][stage] = {"key": key, "seconds": round(time.perf_counter() - t0, 2),
                                "outputs": [_rel(p, out) for p in outputs], "bytes": _sizes(outputs, out),
                                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                "command": command or [], "device": device}
        atomic_write_json(out / LOG_NAME, log)   # after every stage: a killed run keeps what finished
    log["last_run"] = {"ran": ran, "skipped": skipped, "command": command or []}
    atomic_write_json(out / LOG_NAME, log)
    return log


def cmd_embedded_assets(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    config = args.config or (TINY_CONFIG if args.tiny else V3_CONFIG)
    device = args.device or ("cpu" if args.tiny else None)
    stages = STAGES if args.stage == "all" else tuple(s for s in STAGES if s in args.stage.split(","))
    log = build_assets(args.out, config, stages, device=device, resume=args.resume, progress=not args.quiet,
                       command=["nifi", *sys.argv[1:]])
    for name, st in log["stages"].items():
        note = " (finished before, skipped)" if name in log["last_run"]["skipped"] else ""
        print(f"{name}: {st['seconds']} s, {sum(st['bytes'].values())} bytes{note}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("embedded-assets", help="rebuild the embedded scenes, prior and NiFi checkpoint (GPU)")
    p.add_argument("--out", default="runs/embedded_assets")
    p.add_argument("--config", default=None, help=f"assets YAML (default: {V3_CONFIG}; with --tiny: {TINY_CONFIG})")
    p.add_argument("--tiny", action="store_true", help="the whole chain at tiny sizes on the CPU (tests)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available; --tiny: cpu)")
    p.add_argument("--stage", default="all", help="all, or a comma-separated subset of " + ",".join(STAGES))
    p.add_argument("--resume", action="store_true", help="skip stages the log records as finished (same config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_embedded_assets)
