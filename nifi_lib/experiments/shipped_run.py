"""The embedded default's finished work, shipped in ``data/embedded/run/`` so that ``make run`` does not redo it.

``make run`` spent most of its time on work whose result never changes between runs on the same code: the
artifact synthesis of the embedded scenes (pruning, fine-tuning and coding three levels each; about 13 of its 32
minutes on 2 cores) and the 600-step trainings of NiFi and its w/o-t0 ablation. ``nifi ship-run`` copies that
work out of a finished run folder (``runs/embedded``, made by the notebooks' own ``ensure_*`` calls):

- ``artifacts/<scene>/``: ``synth.json`` and the coded levels (``level_<l>.nifigs``, a few KB each); the dense
  ``full.ply`` is the scene's own ``point_cloud.ply`` and is recorded by its SHA-256 instead of copied;
- ``<exp>/``: ``best.pt`` (chosen on held-out training views, as every embedded run; without its optimizer
  moments, which only a resume reads), ``train_summary.json`` and ``train_log.csv`` of ``nifi`` and ``nifi_wo_t0``;
- ``shipped.json``: what was shipped, from where, with which settings.

:mod:`~nifi_lib.experiments.embedded` seeds a run folder from it (:func:`seed_artifacts`, :func:`seed_run`) only
where the folder has nothing yet, and the usual checks then decide: the synthesis is reused only if its settings
equal the requested ones, a run only if it was trained with exactly the requested config; anything else is built
anew in the run folder, as before. The repository's files are never written by a notebook.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..io.hashing import sha256_file
from ..paths import EMBEDDED_DIR, repo_path

SHIPPED_RUN = EMBEDDED_DIR / "run"
MANIFEST = "shipped.json"
RUN_FILES = ("best.pt", "train_summary.json", "train_log.csv")
STRIPPED = ("optim_minus", "optim_plus")          # not shipped: a finished run is never resumed
EXPS = ("nifi", "nifi_wo_t0")


class ShipError(NifiError):
    pass


def _display(p: Path) -> str:
    from ..synthesis.pairs import display_path

    return display_path(p)


def read_shipped(root: Path | None = None) -> dict | None:
    """``shipped.json`` of ``root`` (default :data:`SHIPPED_RUN`), or None when there is none (or it is unreadable:
    nothing is seeded then)."""
    try:
        return json.loads((Path(root or SHIPPED_RUN) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def ship_run(run_dir: str | Path = "runs/embedded", out: str | Path = SHIPPED_RUN, exps=EXPS) -> dict:
    """Copy ``run_dir``'s complete syntheses and finished runs into ``out`` (replaced only when all of it could be
    copied); returns ``shipped.json``."""
    run_dir, out = repo_path(run_dir), repo_path(out)
    arts = sorted(p for p in (run_dir / "artifacts").glob("*") if p.is_dir())
    if not arts:
        raise ShipError(f"{run_dir / 'artifacts'}: no synthesis to ship (run notebook 03 or `make run` first)")
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        doc = _ship_into(run_dir, arts, tmp, exps)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return doc


def _ship_into(run_dir: Path, arts: list[Path], tmp: Path, exps) -> dict:
    from ..synthesis.pipeline import synth_complete
    from .embedded import train_summary

    doc: dict = {"from": _display(run_dir), "artifacts": {}, "runs": {}}
    for art in arts:
        meta = synth_complete(art)
        if meta is None:
            raise ShipError(f"{art}: incomplete synthesis (its synth.json is missing or a level file is absent)")
        source = repo_path(meta["full_source"])
        if not source.is_file() or sha256_file(source) != sha256_file(art / meta["full_ply"]):
            raise ShipError(f"{art / meta['full_ply']}: not the scene's own PLY ({meta['full_source']}); "
                            "only syntheses of a pretrained PLY in the repository are shipped")
        dst = tmp / "artifacts" / art.name
        dst.mkdir(parents=True)
        for f in ["synth.json", *[lv["file"] for lv in meta["levels"]]]:
            shutil.copy2(art / f, dst / f)
        doc["artifacts"][art.name] = {"full_ply": meta["full_ply"], "from": meta["full_source"],
                                      "sha256": sha256_file(source), "settings": meta.get("settings")}
    for exp in exps:
        done = (run_dir / exp / "train_summary.json").is_file() and (run_dir / exp / "best.pt").is_file()
        summary = train_summary(run_dir / exp) if done else None
        if not summary:
            raise ShipError(f"{run_dir / exp}: no finished run (best.pt and train_summary.json)")
        if summary.get("val_split") in (None, "test"):
            raise ShipError(f"{run_dir / exp}: best.pt was not chosen on held-out training views")
        (tmp / exp).mkdir(parents=True)
        for f in RUN_FILES[1:]:
            shutil.copy2(run_dir / exp / f, tmp / exp / f)
        _save_finished(run_dir / exp / "best.pt", tmp / exp / "best.pt")
        doc["runs"][exp] = {"steps": summary.get("steps"), "seconds": summary.get("seconds"),
                            "val_split": summary.get("val_split"), "best_metric": summary.get("best_metric")}
    atomic_write_json(tmp / MANIFEST, doc)
    return doc


def _save_finished(src: Path, dst: Path) -> None:
    """``best.pt`` without the optimizer moments (two thirds of its bytes): a finished run is restored from, never
    resumed. The adapters (phi- and the critic phi+), step, t0, restore settings and config stay as they are."""
    import torch

    from ..restoration.io import safe_torch_load

    ck = safe_torch_load(src)
    if not isinstance(ck, dict) or "adapters" not in ck:
        raise ShipError(f"{src}: not a nifi training checkpoint")
    torch.save({k: v for k, v in ck.items() if k not in STRIPPED}, dst)


def seed_artifacts(run_dir: str | Path, scene_names: list[str], root: Path | None = None) -> list[str]:
    """Copy the shipped synthesis of each named scene into ``<run_dir>/artifacts/<scene>`` where that folder has
    no ``synth.json``; ``full.ply`` comes from the scene's PLY when its SHA-256 is the recorded one (else that
    scene is not seeded). Returns the scenes seeded."""
    root = Path(root or SHIPPED_RUN)
    doc = read_shipped(root)
    if not doc:
        return []
    seeded = []
    for name in scene_names:
        entry, src = doc["artifacts"].get(name), root / "artifacts" / name
        dst = repo_path(run_dir) / "artifacts" / name
        if entry is None or (dst / "synth.json").exists() or not (src / "synth.json").is_file():
            continue
        ply = repo_path(entry["from"])
        if not ply.is_file() or sha256_file(ply) != entry["sha256"]:
            continue
        tmp = dst.with_name(dst.name + ".seed")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.copy2(ply, tmp / entry["full_ply"])
        if dst.exists():                     # an empty or partial folder: the copy replaces it
            shutil.rmtree(dst)
        tmp.rename(dst)
        seeded.append(name)
    return seeded


def _normalized(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def seed_run(run_dir: str | Path, exp: str, cfg, root: Path | None = None) -> bool:
    """Copy the shipped run ``exp`` into ``<run_dir>/<exp>`` when that folder has no ``best.pt`` and the shipped
    run was trained with exactly ``cfg`` (the config its ``train_summary.json`` records). Returns whether it did."""
    src, dst = Path(root or SHIPPED_RUN) / exp, repo_path(run_dir) / exp
    if (dst / "best.pt").exists() or not all((src / f).is_file() for f in RUN_FILES):
        return False
    try:
        trained = json.loads((src / "train_summary.json").read_text()).get("config")
    except (OSError, ValueError):
        return False
    if not isinstance(trained, dict) or _normalized(trained) != _normalized(cfg.to_dict()):
        return False
    dst.mkdir(parents=True, exist_ok=True)
    for f in ("train_log.csv", "train_summary.json", "best.pt"):   # best.pt last: the run counts once it is there
        tmp = dst / (f + ".seed")
        shutil.copy2(src / f, tmp)
        tmp.replace(dst / f)
    return True


def cmd_ship_run(args: argparse.Namespace) -> int:
    doc = ship_run(args.run, args.out)
    out = repo_path(args.out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"shipped {len(doc['artifacts'])} syntheses and runs {sorted(doc['runs'])} into {out} ({size} bytes)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("ship-run", help="copy a finished embedded run (syntheses, NiFi and w/o-t0 runs) into "
                                        "data/embedded/run, which make run then reuses")
    p.add_argument("--run", default="runs/embedded", help="the run folder (make run's notebooks fill runs/embedded)")
    p.add_argument("--out", default=str(SHIPPED_RUN))
    p.set_defaults(func=cmd_ship_run)
