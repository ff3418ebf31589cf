"""What each notebook works on, in either profile: one call per notebook that branches here, not in the notebook.

The notebooks take their inputs as papermill parameters (``docs/paper_mode.md`` lists them per notebook):

- ``pairs_root``: the training pairs (``nifi pairs --split all`` per DL3DV scene, or any ``nifi train`` root);
- ``test_pairs_root``: the benchmark pairs (``nifi prepare-benchmark``: ``<root>/<dataset>/<scene>/rate_*/test``);
- ``ckpt`` / ``ckpt_wo_t0``: phi- of NiFi and of the "w/o t0" ablation (trained with ``diffusion.t0: 1000``);
- ``base_model`` / ``embeddings``: the backbone (folder or hub id) and its prompt embeddings (.npz);
- ``run_dir``: where notebooks 05-08 write and read (``<run_dir>/nifi``, ``metrics.json``,
  ``benchmark_metrics.json``, ``outputs/``).

**Paper mode** is on when a pair root is given (``pairs_root`` or ``test_pairs_root`` not None: the paper profile
always names them). Then nothing here touches the embedded scenes: the given pairs, checkpoints and backbone are
used, a missing input is an :class:`InputsError` naming the command that makes it, and an optional one (e.g.
``ckpt_wo_t0``) is skipped with a note. With no pair root given, every function does exactly what the embedded
default did before (``nifi_lib.experiments.embedded``: the same calls in the same order, so ``make run``'s numbers
do not change).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, config_from_dict, load_config, merge_overrides
from ..devices import default_device
from ..errors import NifiError
from ..paths import repo_path, resolve_model_ref


class InputsError(NifiError, ValueError):
    """A paper-mode input (pair root, checkpoint, run folder) is missing or unusable."""


def paper_mode(*pair_roots) -> bool:
    """True when any of the given pair roots is set: the notebook works on given inputs, not the embedded ones."""
    return any(r not in (None, "") for r in pair_roots)


def _display(p) -> str:
    from ..synthesis.pairs import display_path

    return display_path(p) or str(p)


def existing_dir(path: str | Path, what: str, how: str) -> Path:
    """``path`` (repo-relative or absolute) when it is a folder, else an :class:`InputsError` saying how to make it."""
    p = repo_path(path)
    if not p.is_dir():
        raise InputsError(f"{_display(p)}: {what} not found ({how})")
    return p


def existing_file(path: str | Path, what: str, how: str) -> Path:
    p = repo_path(path)
    if not p.is_file():
        raise InputsError(f"{_display(p)}: {what} not found ({how})")
    return p


def _merge(a: dict | None, b: dict | None) -> dict | None:
    """:func:`~nifi_lib.config.merge_overrides` of two optional override mappings; None when both are empty."""
    return merge_overrides(a or {}, b or {}) or None


def series_config(config_path: str | Path, max_steps: int | None = None, overrides: dict | None = None,
                  base_model: str | None = None, embeddings: str | None = None) -> Config:
    """``config_path`` with ``train.max_steps`` (when given), the ``overrides`` mapping (``{section: {key: value}}``)
    and ``model.backbone`` / ``model.embeddings`` replaced by ``base_model`` / ``embeddings`` when given."""
    model = {k: v for k, v in (("backbone", base_model), ("embeddings", embeddings)) if v is not None}
    steps = {"train": {"max_steps": int(max_steps)}} if max_steps else None
    return load_config(repo_path(config_path), overrides=_merge(_merge(steps, overrides), {"model": model} if model else None))


def default_dtype(dtype: str | None, device: str) -> str:
    return dtype or ("bf16" if str(device).startswith("cuda") else "fp32")


def run_summary(ckpt_or_run: str | Path) -> dict | None:
    """The ``train_summary.json`` beside a checkpoint (or in a run folder), None when there is none (an exported
    or the authors' checkpoint)."""
    from .embedded import train_summary

    try:
        data = train_summary(ckpt_or_run)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def best_validation(summary: dict | None):
    """The best validation value a run recorded (None without a summary)."""
    return ((summary or {}).get("best_metric") or {}).get("value")


# ------------------------------------------------------------------------------------------------
# notebook 01: one scene's synthesis, or the existing one behind pairs_root
# ------------------------------------------------------------------------------------------------
@dataclass
class SceneSynthesis:
    """Where notebook 01's scene, artifacts and test pairs are. ``reuse_synthesis``: the artifacts behind an
    existing pair root are shown (nothing synthesized); ``reuse_pairs``: its test pairs too (nothing rendered)."""

    src: object
    art_dir: Path
    pairs_dir: Path
    reuse_synthesis: bool = False
    reuse_pairs: bool = False
    note: str = ""

    @property
    def name(self) -> str:
        return self.src.name

    def synthesize(self, settings, ply: str | None = None, progress: bool = True) -> tuple[dict, float]:
        """``(synth.json, seconds)``: :func:`~nifi_lib.synthesis.pipeline.synthesize_scene` (redone, as the
        embedded notebook always did), or the existing synthesis read back (0 s)."""
        from ..synthesis.pipeline import synth_complete, synthesize_scene

        if self.reuse_synthesis:
            return synth_complete(self.art_dir), 0.0
        t0 = time.perf_counter()
        meta = synthesize_scene(self.src.root, self.art_dir, settings, ply=repo_path(ply) if ply else None,
                                progress=progress, overwrite=True)
        return meta, time.perf_counter() - t0

    def test_pairs(self, device: str = "cpu") -> tuple[dict, float]:
        """``(manifest, seconds)``: the test pairs rendered by :func:`~nifi_lib.synthesis.pipeline.codec_pairs`,
        or the existing ones read back (0 s)."""
        from ..synthesis.pairs import read_manifest
        from ..synthesis.pipeline import codec_pairs

        if self.reuse_pairs:
            return read_manifest(self.pairs_dir), 0.0
        t0 = time.perf_counter()
        manifest = codec_pairs(self.art_dir, "test", self.pairs_dir, device=device, overwrite=True)
        return manifest, time.perf_counter() - t0


def _manifest_scene_dirs(root: Path) -> list[Path]:
    """Scene folders with a ``manifest.json`` under a pair root (``<scene>/``, ``<dataset>/<scene>/`` or the
    root itself)."""
    if (root / "manifest.json").is_file():
        return [root]
    return sorted({m.parent for pat in ("*/manifest.json", "*/*/manifest.json") for m in root.glob(pat)
                   if not any(part.startswith(".") for part in m.relative_to(root).parts)})


def scene_synthesis(scene: str | Path, work_dir: str | Path, pairs_root: str | Path | None = None) -> SceneSynthesis:
    """Notebook 01's scene. Without ``pairs_root`` (or when it does not exist): ``scene`` (a folder in any layout
    :func:`~nifi_lib.synthesis.scene.open_scene` reads), synthesized into ``<work_dir>/artifacts/<scene>`` with
    test pairs in ``<work_dir>/pairs/<scene>``. With an existing ``pairs_root``: its scene named like ``scene``
    (else its first scene) whose manifest names a complete synthesis is shown instead, nothing synthesized;
    its test pairs are reused when present, else rendered into ``<work_dir>/pairs/<scene>``."""
    from ..synthesis.pairs import manifest_complete, read_manifest
    from ..synthesis.pipeline import synth_complete
    from ..synthesis.scene import open_scene

    work = repo_path(work_dir)
    root = repo_path(pairs_root) if pairs_root else None
    if root is not None and root.is_dir():
        wanted = Path(str(scene)).name
        candidates = sorted(_manifest_scene_dirs(root), key=lambda d: (d.name != wanted, str(d)))
        skipped = []
        for scene_dir in candidates:
            man = read_manifest(scene_dir) or {}
            art = repo_path(man["artifacts"]) if man.get("artifacts") else None
            meta = synth_complete(art) if art is not None else None
            if meta is None:
                skipped.append(f"{scene_dir.name} ({'no complete synthesis at ' + _display(art) if art else man.get('mode', 'no artifacts')})")
                continue
            src = open_scene(repo_path(meta["source"]), name=meta["scene"], background=meta["background"])
            labels = [lv["label"] for lv in meta["levels"]]
            have_test = manifest_complete(scene_dir, labels, ["test"])
            pairs_dir = scene_dir if have_test else work / "pairs" / src.name
            note = (f"pairs_root {_display(root)} exists: showing its scene {src.name} (synthesis "
                    f"{_display(art)}, nothing synthesized; test pairs "
                    f"{'reused' if have_test else 'rendered into ' + _display(pairs_dir)})")
            return SceneSynthesis(src, art, pairs_dir, reuse_synthesis=True, reuse_pairs=have_test, note=note)
        why = f"pairs_root {_display(root)} has no scene with a complete synthesis ({'; '.join(skipped) or 'no manifests'})"
    else:
        why = f"pairs_root {_display(root)} does not exist" if root is not None else ""
    src = open_scene(repo_path(scene))
    note = (f"{why}: " if why else "") + f"synthesizing {_display(repo_path(scene))} into {_display(work)}"
    return SceneSynthesis(src, work / "artifacts" / src.name, work / "pairs" / src.name, note=note)


# ------------------------------------------------------------------------------------------------
# clean views of a pair root (notebook 02 in paper mode)
# ------------------------------------------------------------------------------------------------
def _center_crop(img, h: int, w: int):
    _, H, W = img.shape
    top, left = (H - h) // 2, (W - w) // 2
    return img[:, top:top + h, left:left + w]


def pair_views(pairs_root: str | Path, split: str = "test", per_scene: int | None = 2, every: int | None = None,
               size: int | None = None, multiple: int = 16):
    """Clean frames ``(N, 3, h, w)`` in [0, 1] of a pair root's ``split``, one rate per scene (clean frames are
    the same at every rate): per scene, the first ``per_scene`` views by name, or with ``every`` the held-out
    views of :func:`~nifi_lib.training.data.holdout_views` (every ``every``-th). All are center-cropped to one
    size: ``size`` (square, at most the smallest frame) or the smallest frame, rounded down to ``multiple``."""
    import torch

    from ..io.images import load_image
    from ..synthesis.pairs import read_pairs
    from ..training.data import holdout_views

    root = repo_path(pairs_root)
    items = read_pairs(root, split, dataset=root.name)
    first_rate = {}
    for it in items:
        first_rate.setdefault((it.dataset, it.scene), it.rate)
    items = [it for it in items if it.rate == first_rate[(it.dataset, it.scene)]]
    if every:
        items = holdout_views(items, every=int(every))[1]
    else:
        by_scene: dict = {}
        for it in sorted(items, key=lambda i: (str(i.dataset), i.scene, i.name)):
            by_scene.setdefault((it.dataset, it.scene), []).append(it)
        items = [it for v in by_scene.values() for it in v[:per_scene]]
    if not items:
        raise InputsError(f"{_display(root)}: no '{split}' views to show")
    imgs = [load_image(it.clean) for it in items]
    h = min(i.shape[1] for i in imgs)
    w = min(i.shape[2] for i in imgs)
    if size:
        h = w = min(int(size), h, w)
    h, w = max(h // multiple * multiple, multiple), max(w // multiple * multiple, multiple)
    return torch.stack([_center_crop(i, h, w) for i in imgs])


# ------------------------------------------------------------------------------------------------
# notebook 02: the embedded prior, or the given backbone
# ------------------------------------------------------------------------------------------------
@dataclass
class PriorInputs:
    """Notebook 02's backbone and views. ``log``: the embedded prior's ``prior_log.json`` (None for a given
    backbone that has none); ``views``: held-out (test) views; ``val_views``: held-out training views."""

    bb: object
    backbone: str
    log: dict | None
    views: object
    val_views: object
    paper: bool = False
    note: str = ""

    @property
    def final_flow_loss(self):
        return (self.log or {}).get("info", {}).get("final_flow_loss")

    def describe(self) -> str:
        """The prior's training info (embedded) or the given backbone's components (paper mode)."""
        if not self.paper:
            return str({k: v for k, v in self.log["info"].items() if k != "config"})
        return describe_backbone(self.bb, self.backbone) + (f"\n{self.note}" if self.note else "")


def describe_backbone(bb, name: str) -> str:
    """One line per component of a backbone: class, parameters, the latent and prompt widths."""
    def count(m) -> str:
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters"

    t = bb.transformer.config
    lines = [f"backbone {name} ({bb.kind}): scaling factor {bb.scaling_factor:.4f}, VAE scale {bb.vae_scale_factor}, "
             f"patch {bb.patch_size}",
             f"  VAE ({bb.vae.__class__.__name__}): {count(bb.vae)}, {bb.vae.config.latent_channels} latent channels",
             f"  transformer ({bb.transformer.__class__.__name__}): {count(bb.transformer)}, {t.num_layers} layers, "
             f"joint attention width {t.joint_attention_dim}, pooled {t.pooled_projection_dim}",
             f"  scheduler ({bb.scheduler.__class__.__name__}): {bb.scheduler.config.num_train_timesteps} steps, "
             f"shift {bb.scheduler.config.shift:g}",
             f"  prompt embeddings: {'loaded' if bb.prompt is not None else 'none (pass embeddings)'}"]
    return "\n".join(lines)


def prior_inputs(base_model: str = "data/embedded/backbone", retrain: bool = False,
                 retrain_out: str = "runs/embedded/backbone_retrained", vae_steps: int = 1200,
                 transformer_steps: int = 2500, embeddings: str | None = None, pairs_root: str | None = None,
                 test_pairs_root: str | None = None, device: str | None = None, dtype: str | None = None,
                 views_per_scene: int = 2, view_size: int | None = None, holdout_every: int = 8) -> PriorInputs:
    """Notebook 02. Embedded default (no pair root): the embedded prior (retrained first with ``retrain``), its
    training log, the embedded scenes' test views (2 per scene) and held-out training views. Paper mode: the
    given backbone ``base_model`` with ``embeddings`` on ``device`` (no prior is trained, ``retrain`` is
    ignored), clean test views of ``test_pairs_root`` (``views_per_scene`` per scene) and the held-out training
    views of ``pairs_root`` (every ``holdout_every``-th), center-cropped to ``view_size``."""
    from ..diffusion.backbone import load_backbone
    from ..diffusion.prior import PriorConfig, load_prior_log, train_prior

    if not paper_mode(pairs_root, test_pairs_root):
        from .embedded import embedded_image_paths, embedded_validation_views, embedded_views

        backbone = base_model
        if retrain:
            train_prior(embedded_image_paths("train"), repo_path(retrain_out),
                        PriorConfig(vae_steps=vae_steps, transformer_steps=transformer_steps))
            backbone = retrain_out
        bb = load_backbone(str(repo_path(backbone)))
        log = load_prior_log(repo_path(backbone))
        return PriorInputs(bb, str(backbone), log, embedded_views("test", per_scene=views_per_scene),
                           embedded_validation_views())
    dev = default_device(device)
    ref = resolve_model_ref(base_model)
    bb = load_backbone(ref, embeddings=repo_path(embeddings) if embeddings else None, device=dev,
                       dtype=default_dtype(dtype, dev))
    log_file = Path(ref) / "prior_log.json"
    log = json.loads(log_file.read_text()) if log_file.is_file() else None
    test_root = existing_dir(test_pairs_root or pairs_root, "test pairs",
                             "make them with `nifi prepare-benchmark --out DIR`, or pass test_pairs_root")
    views = pair_views(test_root, "test", per_scene=views_per_scene, size=view_size)
    val_root = existing_dir(pairs_root or test_pairs_root, "training pairs",
                            "make them with `nifi pairs --split all`, or pass pairs_root")
    val_views = pair_views(val_root, "train", every=holdout_every, size=view_size)
    note = (f"paper mode: the given backbone (no prior trained here{'; retrain ignored' if retrain else ''}); "
            f"views: {len(views)} test views of {_display(test_root)}, {len(val_views)} held-out training views "
            f"of {_display(val_root)}")
    return PriorInputs(bb, str(base_model), log, views, val_views, paper=True, note=note)


# ------------------------------------------------------------------------------------------------
# notebook 03: the example image and the w/o-t0 ablation's phi-
# ------------------------------------------------------------------------------------------------
def example_image(image_path: str | None = None, test_pairs_root: str | None = None) -> Path:
    """``image_path`` when given, else the clean frame of the first test pair of ``test_pairs_root``."""
    from ..synthesis.pairs import read_pairs

    if image_path:
        return existing_file(image_path, "image", "pass image_path or test_pairs_root")
    if not test_pairs_root:
        raise InputsError("no image: pass image_path or test_pairs_root")
    root = existing_dir(test_pairs_root, "test pairs", "make them with `nifi prepare-benchmark`")
    return read_pairs(root, "test", dataset=root.name)[0].clean


def wo_t0_checkpoint(run_dir: str | None = None, ckpt_wo_t0: str | None = None, paper: bool = False,
                     train_max_steps: int | None = None, scenes=None, finetune_iterations: int = 300,
                     progress: bool = True) -> str | None:
    """The "NiFi w/o t0" phi- that notebook 03 reads back: ``ckpt_wo_t0`` when given; in paper mode nothing
    else (None, with a printed note: it is trained with ``nifi train --set diffusion.t0=1000``); in the embedded
    default trained on the embedded pairs in ``<run_dir>/nifi_wo_t0`` (:func:`~.embedded.ensure_trained`), or
    None without ``run_dir``."""
    if ckpt_wo_t0:
        return str(existing_file(ckpt_wo_t0, "ckpt_wo_t0", "a phi- trained with diffusion.t0: 1000"))
    if paper:
        print("paper mode, no ckpt_wo_t0 given: the w/o-t0 ablation is skipped here (train it with `nifi train "
              "... --set diffusion.t0=1000` and pass ckpt_wo_t0)")
        return None
    if not run_dir:
        return None
    from .embedded import embedded_wo_t0_config, ensure_trained

    steps = {"train": {"max_steps": int(train_max_steps)}} if train_max_steps else None
    return str(ensure_trained(run_dir, embedded_wo_t0_config(steps), exp="nifi_wo_t0", scenes=scenes,
                              finetune_iterations=finetune_iterations, progress=progress))


# ------------------------------------------------------------------------------------------------
# notebook 05: the training run
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainingInputs:
    """Notebook 05's run: ``cfg`` trained on ``pairs_root`` into ``out`` (or the given ``ckpt``);
    ``examples_root``: the pairs the before/after figure shows (test split)."""

    cfg: Config
    pairs_root: Path
    examples_root: Path
    out: Path
    run_dir: str
    exp: str
    ckpt: Path | None = None
    paper: bool = False
    device: str | None = None
    dtype: str | None = None
    scenes: list | None = None
    finetune_iterations: int = 300

    @property
    def example_options(self) -> dict:
        """What :func:`~.embedded.before_after_examples` restores with besides the backbone (paper mode only)."""
        if not self.paper:
            return {}
        dev = default_device(self.device)
        emb = self.cfg.model.embeddings
        return {"embeddings": str(repo_path(emb)) if emb else None, "device": dev,
                "dtype": default_dtype(self.dtype, dev)}

    def describe(self) -> str:
        src = f"given checkpoint {_display(self.ckpt)}" if self.ckpt else f"experiment {_display(self.out)}"
        return f"pairs: {_display(self.pairs_root)}  {src}  backbone: {self.cfg.model.backbone}"

    def checkpoint(self, overwrite: bool = False, progress: bool = True) -> Path:
        """``best.pt``: the given ``ckpt`` (loaded, not trained; ``overwrite`` ignored), else trained (or reused
        when finished, resumed when interrupted; ``overwrite`` starts afresh) on the given pairs in paper mode,
        on the embedded pairs otherwise (:func:`~.embedded.ensure_trained`)."""
        from .embedded import ensure_trained, run_training

        if self.ckpt is not None:
            return self.ckpt
        if overwrite and self.out.exists():
            shutil.rmtree(self.out)
        if self.paper:
            return run_training(self.cfg, self.pairs_root, self.out, progress=progress)
        return ensure_trained(self.run_dir, self.cfg, exp=self.exp, progress=progress, scenes=self.scenes,
                              finetune_iterations=self.finetune_iterations, use_shipped=not overwrite)

    def demo_run(self, steps: int, progress: bool = True) -> Path | None:
        """Embedded, ``steps`` > 0: a short CPU run of the same config in ``<run_dir>/<exp>_demo`` (trained, or
        reused when finished), shown beside the long run's log, which ``make run`` takes from ``data/embedded/run``
        (issue 17: the reader sees training happen and the converged run). Paper mode or ``steps`` <= 0: None."""
        from .embedded import ensure_trained

        if self.paper or not steps or steps <= 0:
            return None
        cfg = config_from_dict(_merge(self.cfg.to_dict(), {"train": {"max_steps": int(steps)}}), "demo run")
        best = ensure_trained(self.run_dir, cfg, exp=f"{self.exp}_demo", progress=progress, scenes=self.scenes,
                              finetune_iterations=self.finetune_iterations, use_shipped=False)
        return best.parent

    def summary(self) -> dict:
        s = run_summary(self.out)
        if s is None:
            raise InputsError(f"{_display(self.out)}: no train_summary.json; notebook 05 shows a `nifi train` run "
                              "(pass its best.pt/latest.pt as ckpt), notebook 06 evaluates any weights")
        return s


def training_inputs(config_path: str, run_dir: str, exp: str = "nifi", max_steps: int | None = None,
                    pairs_root: str | None = None, test_pairs_root: str | None = None, ckpt: str | None = None,
                    base_model: str | None = None, embeddings: str | None = None,
                    config_overrides: dict | None = None, device: str | None = None, dtype: str | None = None,
                    scenes=None, finetune_iterations: int = 300) -> TrainingInputs:
    """Notebook 05. Embedded default: ``config_path`` (``max_steps``) on the embedded pairs of ``run_dir``
    (built if missing), experiment ``<run_dir>/<exp>``. Paper mode: ``config_path`` with ``config_overrides`` and
    the given ``base_model``/``embeddings`` on ``pairs_root``; with ``ckpt`` that checkpoint is loaded instead of
    training; the before/after rows come from ``test_pairs_root`` (else ``pairs_root``'s test split)."""
    paper = paper_mode(pairs_root, test_pairs_root)
    cfg = series_config(config_path, max_steps, config_overrides, base_model, embeddings)
    given = existing_file(ckpt, "ckpt", "train it with `nifi train` or leave ckpt null to train here") if ckpt else None
    if not paper:
        from .embedded import ensure_embedded_pairs

        pairs = ensure_embedded_pairs(run_dir, scenes=scenes, finetune_iterations=finetune_iterations)
        examples = pairs
    else:
        pairs = existing_dir(pairs_root or test_pairs_root, "training pairs",
                             "make them with `nifi synthesize` + `nifi pairs --split all` per scene")
        examples = existing_dir(test_pairs_root, "test pairs", "make them with `nifi prepare-benchmark`") \
            if test_pairs_root else pairs
    out = given.parent if given is not None else repo_path(run_dir) / exp
    return TrainingInputs(cfg, pairs, examples, out, run_dir, exp, given, paper, device, dtype, scenes,
                          finetune_iterations)


# ------------------------------------------------------------------------------------------------
# notebooks 06 and 07: what is evaluated
# ------------------------------------------------------------------------------------------------
SIGMA_METHODS = ("bm3d", "ffdnet")


@dataclass
class EvaluationInputs:
    """Notebooks 06/07: the benchmark root ``test_pairs`` (``<dataset>/<scene>/``), the one ``dataset`` whose
    tables are shown and its scene root ``eval_root``; the training pairs ``train_pairs`` (held-out views for the
    baselines' sigma, the alpha sweep's training); the checkpoints, backbone and where results go (``run``)."""

    run: Path
    train_pairs: Path | None
    test_pairs: Path
    dataset: str
    cfg: Config
    ckpt: str
    ckpt_wo_t0: str | None
    base_model: str
    embeddings: str | None = None
    device: str | None = None
    dtype: str | None = None
    paper: bool = False
    notes: list[str] = field(default_factory=list)
    metrics: tuple[str, ...] = ("lpips", "dists", "psnr", "ssim")   # what eval, benchmark and the sweeps score

    @property
    def perceptual(self) -> tuple[str, ...]:
        """The perceptual metrics of :attr:`metrics` (Table 1's LPIPS and DISTS, or LPIPS alone), in that order."""
        return tuple(m for m in ("lpips", "dists") if m in self.metrics)

    @property
    def eval_root(self) -> Path:
        """The shown dataset's scene root (``nifi eval``, the t0 sweep)."""
        return self.test_pairs / self.dataset

    @property
    def paper_dataset(self) -> str:
        """The paper's Table 1 dataset put beside ours: the same one when it is a paper dataset."""
        from ..evaluation import paper

        return self.dataset if self.dataset in paper.DATASET_TITLES else "mipnerf360"

    @property
    def method_options(self) -> dict:
        """What every diffusion method is created with besides ``base_model`` (paper mode only)."""
        return {k: v for k, v in (("embeddings", self.embeddings), ("device", self.device), ("dtype", self.dtype))
                if v is not None}

    @property
    def restore_options(self) -> dict:
        return {"base_model": self.base_model, **self.method_options}

    def methods(self, requested) -> list[str]:
        """``requested`` without ``nifi_wo_t0`` when there is no w/o-t0 checkpoint."""
        return [m for m in requested if m != "nifi_wo_t0" or self.ckpt_wo_t0]

    def describe(self, checkpoint_text=None) -> str:
        """The checkpoints, each as ``checkpoint_text(ckpt, name)`` (notebooks pass
        :func:`~nifi_lib.viz.training_plots.format_checkpoint`: in the embedded default exactly notebook 06's former
        two summary lines); in paper mode preceded by the inputs and followed by the notes (what is skipped, why)."""
        text = checkpoint_text or (lambda ckpt, name: f"{name}: {_display(ckpt)}")
        lines = [text(self.ckpt, f"NiFi ({self.ckpt})")]
        if self.ckpt_wo_t0:
            lines.append(text(self.ckpt_wo_t0, f"NiFi w/o t0 ({self.ckpt_wo_t0})"))
        if not self.paper:
            return "\n".join(lines)
        head = (f"paper mode: test pairs {_display(self.test_pairs)} (dataset shown: {self.dataset}), training pairs "
                f"{_display(self.train_pairs) if self.train_pairs else 'none'}, backbone {self.base_model}, "
                f"embeddings {self.embeddings}, device {self.device}, dtype {self.dtype}, results in {_display(self.run)}")
        return "\n".join([head, *lines, *self.notes])

    def validation_items(self) -> list | None:
        """NiFi's held-out training views (:func:`~.embedded.validation_items`); in paper mode None (with a note)
        when there are none to use (no training pairs, or a checkpoint without a run summary)."""
        from .embedded import validation_items

        if not self.paper:
            return validation_items(self.train_pairs, repo_path(self.ckpt).parent)
        if self.train_pairs is None:
            why = "no training pairs (pairs_root)"
        else:
            try:
                return validation_items(self.train_pairs, repo_path(self.ckpt).parent)
            except (OSError, ValueError) as e:
                why = str(e).splitlines()[0]
        print(f"no held-out training views ({why}): BM3D/FFDNet estimate their sigma per image instead of "
              "choosing it per rate")
        return None

    def benchmark_methods(self, methods, sigmas=None, max_items: int = 4) -> tuple[dict, dict]:
        """:func:`~.embedded.benchmark_methods` for :meth:`methods` of ``methods``; without held-out views
        (paper mode only) BM3D/FFDNet are created with their per-image sigma estimate."""
        from ..evaluation.baselines import create_method
        from .embedded import benchmark_methods

        methods = self.methods(methods)
        val = self.validation_items() if any(m in SIGMA_METHODS for m in methods) else None
        if val is not None or not self.paper:
            return benchmark_methods(methods, self.ckpt, ckpt_wo_t0=self.ckpt_wo_t0, validation=val, sigmas=sigmas,
                                     max_items=max_items, **self.restore_options)
        instances, sweeps = benchmark_methods([m for m in methods if m not in SIGMA_METHODS], self.ckpt,
                                              ckpt_wo_t0=self.ckpt_wo_t0, **self.restore_options)
        for name in [m for m in methods if m in SIGMA_METHODS]:
            m = create_method(name, device=self.device)
            instances[m.name] = m
        return {n: instances[n] for n in methods if n in instances}, sweeps

    def uncompressed_reference(self, lpips_net: str = "alex", split: str = "test") -> dict | None:
        """The dense 3DGS as the rate-perception reference. Embedded: its artifacts and scenes
        (:func:`~nifi_lib.evaluation.rate.uncompressed_reference`). Paper mode: per scene of the shown dataset,
        the dense PLY and source scene its manifest names, rendered on ``device``; None (printed) when no
        manifest names one (proxy or precomputed pairs)."""
        from ..evaluation.rate import uncompressed_reference

        if not self.paper:
            return uncompressed_reference(self.run / "artifacts", "data/embedded/scenes", lpips_net=lpips_net,
                                          metrics=self.perceptual)
        return dense_reference(self.eval_root, split=split, lpips_net=lpips_net, device=self.device,
                               metrics=self.perceptual)

    def alpha_sweep(self, alphas, steps: int, limit: int | None = None) -> dict | None:
        """Eq. 5's alpha sweep (:func:`~.ablations.alpha_sweep`): short runs of ``steps`` per alpha on the
        training pairs, scored on ``eval_root``; in paper mode None (printed) without training pairs, alphas or
        steps."""
        from .ablations import alpha_sweep

        if not self.paper:
            return alpha_sweep(self.train_pairs, self.run / "ablation_alpha", alphas, steps, self.cfg, limit=limit,
                               metrics=self.perceptual)
        if self.train_pairs is None or not alphas or not steps:
            why = "no training pairs (pairs_root)" if self.train_pairs is None else "alphas or alpha_steps empty"
            print(f"alpha sweep skipped: {why}")
            return None
        return alpha_sweep(self.train_pairs, self.run / "ablation_alpha", alphas, steps, self.cfg, limit=limit,
                           eval_root=self.eval_root, metrics=self.perceptual, **self.restore_options)

    def sharpness(self, t0s=(), per_rate: int | None = None) -> dict:
        """:func:`~.ablations.ablation_sharpness` of ``ckpt`` (and ``ckpt_wo_t0`` when there is one) on the test
        pairs of the shown dataset: both sharpness measures per rate for every method of notebook 07."""
        from .ablations import ablation_sharpness

        return ablation_sharpness(self.eval_root, self.ckpt, self.base_model, t0s=t0s, ckpt_wo_t0=self.ckpt_wo_t0,
                                  per_rate=per_rate, **self.method_options)

    def before_after(self, per_rate: int = 1) -> list[dict]:
        """:func:`~.embedded.before_after_examples` of ``ckpt`` on the test pairs."""
        from .embedded import before_after_examples

        opts = {} if not self.paper else {k: v for k, v in self.method_options.items()}
        return before_after_examples(self.ckpt, self.test_pairs, backbone=self.base_model, per_rate=per_rate, **opts)


def dense_reference(eval_root: str | Path, split: str = "test", lpips_net: str = "alex",
                    device: str | None = None, metrics: tuple[str, ...] = ("lpips", "dists")) -> dict | None:
    """Mean dense-PLY size (MB) and LPIPS/DISTS (:func:`~nifi_lib.evaluation.rate.dense_scores`; DISTS only when
    ``metrics`` names it) of its renders against the ground truth, over the scenes of ``eval_root`` whose manifest
    names a complete synthesis (``artifacts``) and its source scene."""
    import torch

    from ..evaluation.rate import dense_scores, mean_reference
    from ..gs.model import load_ply
    from ..synthesis.pairs import read_manifest
    from ..synthesis.pipeline import render_views, synth_complete
    from ..synthesis.scene import open_scene

    sizes, scores = [], []
    dev = default_device(device)
    for scene_dir in _manifest_scene_dirs(repo_path(eval_root)):
        man = read_manifest(scene_dir) or {}
        art = repo_path(man["artifacts"]) if man.get("artifacts") else None
        meta = synth_complete(art) if art is not None else None
        if meta is None:
            continue
        ply = art / meta["full_ply"]
        src = open_scene(repo_path(meta["source"]), name=meta["scene"], background=meta["background"])
        views = src.views(split)
        renders = render_views(load_ply(ply), src, views, device=dev)
        preds = torch.stack([renders[v.name] for v in views])
        gts = src.load_images(views)
        sizes.append(ply.stat().st_size / 1e6)
        scores.append(dense_scores(preds, gts, lpips_net, metrics))
    if not sizes:
        print(f"no dense reference: no manifest under {_display(eval_root)} names a complete synthesis")
    return mean_reference(sizes, scores)


def _datasets(test_pairs: Path) -> list[str]:
    from ..synthesis.pairs import read_pairs

    return sorted({it.dataset for it in read_pairs(test_pairs, "test", layout="benchmark")})


def evaluation_inputs(run_dir: str, config_path: str = "configs/embedded.yaml", pairs_root: str | None = None,
                      test_pairs_root: str | None = None, ckpt: str | None = None, ckpt_wo_t0: str | None = None,
                      base_model: str | None = None, embeddings: str | None = None, dataset: str | None = None,
                      config_overrides: dict | None = None, train_max_steps: int | None = None,
                      device: str | None = None, dtype: str | None = None, scenes=None,
                      finetune_iterations: int = 300, metrics=None) -> EvaluationInputs:
    """Notebooks 06 and 07.

    Embedded default (no pair root): the embedded pairs of ``run_dir`` (built if missing), ``config_path``
    (``train_max_steps``), ``ckpt``/``ckpt_wo_t0`` or the runs trained in ``<run_dir>/nifi`` and
    ``<run_dir>/nifi_wo_t0`` if missing (:func:`~.embedded.ensure_trained`), the config's backbone.

    Paper mode: ``test_pairs_root`` (required), ``pairs_root`` (optional: held-out views, alpha sweep);
    ``ckpt`` (default ``<run_dir>/nifi/best.pt``, notebook 05's; required), ``ckpt_wo_t0`` (default
    ``<run_dir>/nifi_wo_t0/best.pt`` when it exists; else the ablation is skipped with a note); the backbone:
    ``base_model``, else the one the checkpoint records, else the config's; ``embeddings`` likewise;
    ``dataset``: the one whose tables are shown (default: the first of the test root). Nothing is trained.

    ``metrics`` (both modes; None: LPIPS, DISTS, PSNR, SSIM): what eval, benchmark and the sweeps score. LPIPS is
    required (the rate-perception numbers use it); leaving DISTS out is for machines without its VGG16 trunk
    (the GPU rehearsal: docs/perf/rehearsal_h200/), and the tables then say so."""
    from ..metrics.metrics import METRICS
    from .embedded import embedded_config, embedded_wo_t0_config, ensure_embedded_pairs, ensure_trained

    metrics = tuple(metrics) if metrics else ("lpips", "dists", "psnr", "ssim")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or "lpips" not in metrics:
        raise InputsError(f"metrics {list(metrics)}: " + (f"unknown {unknown} (have {sorted(METRICS)})" if unknown
                          else "LPIPS is required (the rate-perception numbers and Table 1 use it)"))
    run = repo_path(run_dir)
    if not paper_mode(pairs_root, test_pairs_root):
        pairs = ensure_embedded_pairs(run, scenes=scenes, finetune_iterations=finetune_iterations)
        steps = {"train": {"max_steps": int(train_max_steps)}} if train_max_steps else None
        cfg = embedded_config(_merge(steps, config_overrides), path=config_path)
        ckpt = ckpt or str(ensure_trained(run, cfg, scenes=scenes, finetune_iterations=finetune_iterations))
        ckpt_wo_t0 = ckpt_wo_t0 or str(ensure_trained(run, embedded_wo_t0_config(steps), exp="nifi_wo_t0",
                                                      scenes=scenes, finetune_iterations=finetune_iterations))
        return EvaluationInputs(run, pairs, pairs, "embedded", cfg, ckpt, ckpt_wo_t0,
                                str(repo_path(cfg.model.backbone)), metrics=metrics)
    from ..restoration.io import checkpoint_settings

    notes = []
    test = existing_dir(test_pairs_root, "test pairs",
                        "make them with `nifi prepare-benchmark --out DIR` (benchmark layout <dataset>/<scene>/)")
    train_pairs = repo_path(pairs_root) if pairs_root else None
    if train_pairs is not None and not train_pairs.is_dir():
        notes.append(f"pairs_root {_display(train_pairs)} not found: no held-out training views, no alpha sweep")
        train_pairs = None
    cfg = series_config(config_path, train_max_steps, config_overrides, base_model, embeddings)
    ckpt = str(existing_file(ckpt or run / "nifi" / "best.pt", "NiFi checkpoint",
                             "run notebook 05 with this run_dir, `nifi train --exp <run_dir>/nifi`, or pass ckpt"))
    default_wo = run / "nifi_wo_t0" / "best.pt"
    if ckpt_wo_t0:
        ckpt_wo_t0 = str(existing_file(ckpt_wo_t0, "ckpt_wo_t0", "a phi- trained with diffusion.t0: 1000"))
    elif default_wo.is_file():
        ckpt_wo_t0 = str(default_wo)
    else:
        ckpt_wo_t0 = None
        notes.append(f"no ckpt_wo_t0 (and no {_display(default_wo)}): the NiFi w/o t0 ablation is skipped (train "
                     "it with `nifi train ... --set diffusion.t0=1000` and pass ckpt_wo_t0)")
    recorded = checkpoint_settings(ckpt)
    backbone = base_model or recorded.get("backbone") or cfg.model.backbone
    if not embeddings and not base_model and recorded.get("embeddings"):
        embeddings = recorded["embeddings"]
    embeddings = embeddings or cfg.model.embeddings
    dev = default_device(device)
    datasets = _datasets(test)
    if dataset is None:
        dataset = datasets[0]
    elif dataset not in datasets:
        raise InputsError(f"{_display(test)}: no dataset '{dataset}' (have {', '.join(datasets)})")
    if len(datasets) > 1:
        notes.append(f"the benchmark covers {', '.join(datasets)}; the tables show {dataset} (parameter dataset)")
    return EvaluationInputs(run, train_pairs, test, dataset, cfg, ckpt, ckpt_wo_t0, resolve_model_ref(backbone),
                            str(repo_path(embeddings)) if embeddings else None, dev, default_dtype(dtype, dev),
                            paper=True, notes=notes, metrics=metrics)


# ------------------------------------------------------------------------------------------------
# notebook 08: the run to look at
# ------------------------------------------------------------------------------------------------
def comparison_run(run_dir: str, pairs_dir: str | None = None, outputs_dir: str | None = None, demo: bool = True,
                   demo_dir: str = "runs/08_visual_demo", split: str = "test", demo_scenes=("boxes",),
                   demo_rates=("0.1", "0.5", "1.0"), demo_methods=("none", "bm3d", "ffdnet")):
    """Notebook 08's run. ``demo`` (embedded, smoke): :func:`~nifi_lib.evaluation.outputs.ensure_demo_run` (the
    run if it has outputs, else a demo run on the embedded scenes). Without ``demo`` (paper): the run notebook
    06 wrote (``<run_dir>/benchmark_metrics.json`` and ``outputs/``; its pairs from the metrics file), or an
    :class:`InputsError`."""
    from ..evaluation.outputs import _display as out_display, ensure_demo_run, resolve_run

    if demo:
        return ensure_demo_run(run_dir, pairs_dir, outputs_dir, demo_dir=demo_dir, split=split, scenes=demo_scenes,
                               rates=demo_rates, methods=demo_methods)
    paths = resolve_run(run_dir, pairs_dir, outputs_dir)
    if paths is None or paths.outputs_root is None:
        raise InputsError(f"{_display(repo_path(run_dir))}: no benchmark run with restored frames (run notebook 06 "
                          "with this run_dir, or `nifi benchmark ... --out <run_dir>/benchmark_metrics.json "
                          "--save_outputs <run_dir>/outputs`)")
    paths.note = f"run {out_display(paths.run_dir)}"
    return paths


# ------------------------------------------------------------------------------------------------
# notebook 08: render then fix along a camera path
# ------------------------------------------------------------------------------------------------
def fly_through(run_dir: str, scene: str = "boxes", rate: str = "0.5", path: str = "spiral", frames: int = 24,
                artifacts: str | None = None, ckpt: str | None = None, demo: bool = True,
                demo_dir: str = "runs/08_visual_demo", fps: float = 12.0, device: str | None = None) -> dict:
    """Notebook 08's fly-through: :func:`~nifi_lib.evaluation.render_path.render_path` of ``scene``'s level
    ``rate`` along ``path`` (``frames`` frames), into ``<demo_dir>/render_path/<scene>_<rate>_<path>``.

    Artifacts: ``artifacts``, else ``<run_dir>/artifacts/<scene>`` (notebook 01's), else (``demo``) the embedded
    scene synthesized into ``<demo_dir>/artifacts/<scene>`` with the embedded schedule (~15 s on CPU); without
    ``demo`` (paper) an :class:`InputsError`. Checkpoint: ``ckpt``, else ``<run_dir>/nifi/best.pt`` (notebook 05's)
    when it exists, else the frozen base (said in ``note``). Returns the summary with ``note`` and ``video_path``."""
    from ..evaluation.render_path import render_path
    from ..synthesis.pipeline import SynthesisSettings, synth_complete, synthesize_scene
    from .embedded import EMBEDDED_SCENES

    run = repo_path(run_dir) if run_dir else None
    notes = []
    if artifacts:
        art = existing_dir(artifacts, "artifacts folder", "nifi synthesize --scene <scene> --out <artifacts>")
    elif run is not None and synth_complete(run / "artifacts" / scene) is not None:
        art = run / "artifacts" / scene
    elif demo:
        art = repo_path(demo_dir) / "artifacts" / scene
        if synth_complete(art) is None:
            synthesize_scene(EMBEDDED_SCENES / scene, art, SynthesisSettings(c_min=64, n_top=300,
                             finetune_iterations=300, device="cpu"), progress=False, log=lambda *_: None)
        notes.append(f"artifacts synthesized for this demo in {_display(art)} (no {_display(run)}/artifacts/{scene})")
    else:
        raise InputsError(f"no artifacts for scene {scene}: pass path_artifacts (a `nifi synthesize` folder)")
    if ckpt:
        ck = existing_file(ckpt, "checkpoint", "nifi train")
    elif run is not None and (run / "nifi" / "best.pt").is_file():
        ck = run / "nifi" / "best.pt"
    else:
        ck = None
        notes.append("no trained checkpoint found: restored by the frozen base (no phi-), not NiFi")
    out = repo_path(demo_dir) / "render_path" / f"{scene}_{rate}_{Path(path).stem}"
    summary = render_path(art, rate, path, out, ckpt=str(ck) if ck else None, frames=frames, fps=fps,
                          device=default_device(device), progress=False, log=lambda *_: None)
    summary["note"] = "; ".join(notes) or f"NiFi phi- of {_display(ck)}"
    summary["video_path"] = str(out / "render_path.mp4")
    return summary


__all__ = ["InputsError", "paper_mode", "series_config", "run_summary", "best_validation",
           "SceneSynthesis", "scene_synthesis", "pair_views", "PriorInputs", "prior_inputs", "describe_backbone",
           "example_image", "wo_t0_checkpoint", "TrainingInputs", "training_inputs", "EvaluationInputs",
           "evaluation_inputs", "dense_reference", "comparison_run", "fly_through"]
