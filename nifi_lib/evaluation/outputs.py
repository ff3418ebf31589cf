"""Restored frames on disk: the layout ``nifi benchmark/eval --save_outputs DIR`` writes, and a reader for it.

Layout (one PNG per method and frame, written atomically by :func:`nifi_lib.io.images.save_image`)::

    DIR/<method>/<dataset>/<scene>/rate_<label>/<split>/<name>.png     # nifi benchmark (benchmark roots)
    DIR/<method>/<scene>/rate_<label>/<split>/<name>.png               # nifi eval (scene roots)
    DIR/outputs.json                                                   # which pairs, split(s) and methods

i.e. ``DIR/<method>/<key>`` with the frame's relative name (``PairItem.key``) as in the pair root
(``<root>/[<dataset>/]<scene>/rate_<label>/<split>/{clean,degraded}/<name>.png``). The same folder can be read
back by ``precomputed:<method>`` (``--precomputed_root DIR``).

:class:`RunIndex` joins a pair root and an outputs folder: it lists datasets, scenes, rates, views and methods
and loads ``(clean, degraded, {method: restored})`` of one view as ``(H, W, 3)`` float arrays in [0, 1].

A *run folder* (what notebook 08 reads, by default ``runs/embedded``) holds ``pairs/`` (the pair root),
``outputs/`` (the ``--save_outputs`` folder) and optionally the metrics JSON (``benchmark_metrics.json`` or
``metrics.json``), whose per-image records annotate the figures. :func:`ensure_demo_run` builds a tiny
one from the embedded scenes when no run exists yet (proxy degradations, CPU baselines; labelled as such).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import NifiError
from ..io.atomic import atomic_write_json
from ..io.images import IMAGE_EXTS, read_rgb
from ..paths import REPO_ROOT, repo_path
from ..synthesis.pairs import PairItem, read_pairs

OUTPUTS_MANIFEST = "outputs.json"
METRICS_FILES = ("benchmark_metrics.json", "metrics.json")
# display order of methods (others follow alphabetically)
METHOD_ORDER = ("none", "bm3d", "ffdnet", "img2img", "base_t0", "nifi_wo_t0", "nifi")


class OutputsError(NifiError, ValueError):
    """A run folder or outputs folder cannot be read, or a view/method does not exist (a broken pair root is a
    :class:`~nifi_lib.synthesis.pairs.PairError`)."""


def _display(p: Path | str | None) -> str | None:
    if p is None:
        return None
    p = Path(p).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def method_sort_key(name: str) -> tuple:
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def output_path(outputs_root: str | Path, method: str, key: str) -> Path:
    """Where ``--save_outputs`` writes the frame ``key`` of ``method``: ``outputs_root/<method>/<key>.png``."""
    return Path(outputs_root) / method / Path(key).with_suffix(".png")


def write_outputs_manifest(outputs_root: str | Path, pairs_root: str | Path, split: str, layout: str,
                           methods: dict[str, dict], n_images: int) -> Path:
    """Merge this run into ``outputs_root/outputs.json`` (atomic): pair root, layout, splits, methods."""
    path = Path(outputs_root) / OUTPUTS_MANIFEST
    old: dict = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
    same_root = old.get("pairs_root") == _display(pairs_root)
    splits = dict(old.get("splits", {})) if same_root else {}
    splits[split] = n_images
    data = {"pairs_root": _display(pairs_root), "layout": layout, "splits": splits,
            "methods": {**(old.get("methods", {}) if same_root else {}), **methods},
            "layout_doc": ("<outputs>/<method>/<dataset>/<scene>/rate_<label>/<split>/<name>.png" if layout == "benchmark"
                           else "<outputs>/<method>/<scene>/rate_<label>/<split>/<name>.png")}
    atomic_write_json(path, data)
    return path


# ------------------------------------------------------------------------------------------------
# the index
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewKey:
    """One frame of the pair root: ``[<dataset>/]<scene>/rate_<rate>/<split>/<name>``."""

    dataset: str | None
    scene: str
    rate: str
    split: str
    name: str   # file stem

    @property
    def key(self) -> str:
        parts = ([self.dataset] if self.dataset else []) + [self.scene, f"rate_{self.rate}", self.split, self.name]
        return "/".join(parts)

    @property
    def label(self) -> str:
        return f"{self.scene}/{self.name}" if not self.dataset else f"{self.dataset}/{self.scene}/{self.name}"


@dataclass
class ViewImages:
    """One view: ``clean``, ``degraded`` and ``restored[method]``, each ``(H, W, 3)`` float32 in [0, 1].

    Unpacks as ``clean, degraded, restored = images``.
    """

    view: ViewKey
    clean: np.ndarray
    degraded: np.ndarray
    restored: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)   # {"degraded"|method: {metric: value}}

    def __iter__(self) -> Iterator:
        return iter((self.clean, self.degraded, self.restored))

    def image(self, name: str) -> np.ndarray:
        """``"clean"``, ``"degraded"`` or a method name."""
        if name == "clean":
            return self.clean
        if name == "degraded":
            return self.degraded
        if name not in self.restored:
            raise OutputsError(f"{self.view.key}: no output of method '{name}' "
                               f"(have: {', '.join(self.restored) or 'none'})")
        return self.restored[name]


def _load(path: Path) -> np.ndarray:
    return read_rgb(path, allow_convert=True).astype(np.float32) / 255.0


def _find_image(stem_path: Path) -> Path | None:
    for ext in (".png", *[e for e in IMAGE_EXTS if e != ".png"]):
        p = stem_path.with_suffix(ext)
        if p.is_file():
            return p
    return None


class RunIndex:
    """A pair root joined with a ``--save_outputs`` folder (module docstring).

    ``datasets()``, ``scenes()``, ``rates()``, ``views()``, ``methods`` list what is there;
    ``view(...)`` picks a :class:`ViewKey` (``None`` = the first one); ``load(view)`` reads its images.
    """

    def __init__(self, pairs_root: Path, outputs_root: Path | None, items: Sequence[PairItem], layout: str,
                 split: str, records: Sequence[dict] | None = None, run_dir: Path | None = None):
        self.pairs_root = Path(pairs_root)
        self.outputs_root = Path(outputs_root) if outputs_root is not None else None
        self.layout = layout
        self.split = split
        self.run_dir = run_dir
        self._items: dict[ViewKey, PairItem] = {}
        for it in items:
            self._items[ViewKey(it.dataset, it.scene, it.rate, it.split, it.name)] = it
        self._outputs: dict[ViewKey, dict[str, Path]] = {vk: {} for vk in self._items}
        method_dirs = []
        if self.outputs_root is not None and self.outputs_root.is_dir():
            method_dirs = sorted((d for d in self.outputs_root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                                 key=lambda d: method_sort_key(d.name))
        for d in method_dirs:
            for vk in self._items:
                p = _find_image(d / vk.key)
                if p is not None:
                    self._outputs[vk][d.name] = p
        self.methods: list[str] = [d.name for d in method_dirs if any(d.name in o for o in self._outputs.values())]
        if method_dirs and not self.methods:
            ex = next(iter(self._items))
            raise OutputsError(f"{self.outputs_root}: method folders {', '.join(d.name for d in method_dirs[:6])} hold "
                               f"no frame of {self.pairs_root} (split '{split}'); expected e.g. "
                               f"{output_path(self.outputs_root, method_dirs[0].name, ex.key)}")
        self._metrics: dict[tuple, dict[str, dict]] = {}
        for r in records or ():
            k = (r.get("dataset"), r.get("scene"), str(r.get("rate")), r.get("split"), Path(str(r.get("file"))).stem)
            d = self._metrics.setdefault(k, {})
            d.setdefault("degraded", {}).update({m[:-len("_before")]: v for m, v in r.items()
                                                 if m.endswith("_before") and v is not None})
            if r.get("method"):
                d[r["method"]] = {m[:-len("_after")]: v for m, v in r.items() if m.endswith("_after") and v is not None}

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_dirs(cls, pairs_root: str | Path, outputs_root: str | Path | None = None, split: str = "test",
                  metrics_json: str | Path | None = None) -> "RunIndex":
        """Index ``pairs_root`` (scene or benchmark layout) and the method folders of ``outputs_root``."""
        pairs_root = repo_path(pairs_root)
        outputs_root = repo_path(outputs_root) if outputs_root is not None else None
        if outputs_root is not None and not outputs_root.is_dir():
            raise OutputsError(f"{outputs_root}: outputs folder not found (write it with "
                               f"`nifi benchmark ... --save_outputs {outputs_root}`)")
        items = read_pairs(pairs_root, split)   # scene or benchmark layout; hidden (staging) folders skipped
        records = _read_records(repo_path(metrics_json)) if metrics_json else None
        layout = "benchmark" if any(it.dataset for it in items) else "eval"
        return cls(pairs_root, outputs_root, items, layout, split, records)

    @classmethod
    def from_run(cls, run_dir: str | Path, pairs_dir: str | Path | None = None, outputs_dir: str | Path | None = None,
                 split: str = "test") -> "RunIndex":
        """A run folder: ``pairs/``, ``outputs/`` and a metrics JSON (each overridable)."""
        paths = resolve_run(run_dir, pairs_dir, outputs_dir)
        if paths is None:
            raise OutputsError(f"{repo_path(run_dir)}: no run here (expected pairs/ and outputs/, or pass "
                               "pairs_dir/outputs_dir)")
        idx = cls.from_dirs(paths.pairs_root, paths.outputs_root, split, paths.metrics_json)
        idx.run_dir = paths.run_dir
        return idx

    # --- listing ----------------------------------------------------------------------------------
    @property
    def view_keys(self) -> list[ViewKey]:
        return list(self._items)

    def _filter(self, dataset=None, scene=None, rate=None) -> list[ViewKey]:
        return [v for v in self._items if (dataset is None or v.dataset == dataset)
                and (scene is None or v.scene == scene) and (rate is None or v.rate == str(rate))]

    def datasets(self) -> list[str | None]:
        return list(dict.fromkeys(v.dataset for v in self._items))

    def scenes(self, dataset: str | None = None) -> list[str]:
        return list(dict.fromkeys(v.scene for v in self._filter(dataset)))

    def rates(self, scene: str | None = None, dataset: str | None = None) -> list[str]:
        return sorted(dict.fromkeys(v.rate for v in self._filter(dataset, scene)), key=_rate_key)

    def views(self, scene: str | None = None, rate: str | None = None, dataset: str | None = None) -> list[str]:
        return list(dict.fromkeys(v.name for v in self._filter(dataset, scene, rate)))

    def methods_for(self, view: ViewKey) -> list[str]:
        return [m for m in self.methods if m in self._outputs.get(view, {})]

    def view(self, scene: str | None = None, rate: str | None = None, name: str | None = None,
             dataset: str | None = None) -> ViewKey:
        """The view matching the given fields (``None``: the first available); :class:`OutputsError` if none."""
        cands = self._filter(dataset, scene, rate)
        if name is not None:
            cands = [v for v in cands if v.name == str(name) or v.name == Path(str(name)).stem]
        if not cands:
            raise OutputsError(
                f"{self.pairs_root}: no view with dataset={dataset!r} scene={scene!r} rate={rate!r} name={name!r} in "
                f"split '{self.split}' (scenes: {', '.join(self.scenes())}; rates: {', '.join(self.rates())})")
        return cands[0]

    def describe(self) -> str:
        """A few lines: where, how many views per rate, which methods."""
        lines = [f"pairs:   {_display(self.pairs_root)} ({self.layout} layout, split '{self.split}')",
                 f"outputs: {_display(self.outputs_root) if self.outputs_root else '(none)'}",
                 f"datasets: {', '.join(str(d) for d in self.datasets())}; scenes: {', '.join(self.scenes())}",
                 "rates:   " + ", ".join(f"{r} ({len(self._filter(rate=r))} views)" for r in self.rates()),
                 f"methods: {', '.join(self.methods) or '(no restored frames)'}"]
        return "\n".join(lines)

    # --- loading ----------------------------------------------------------------------------------
    def pair_item(self, view: ViewKey) -> PairItem:
        if view not in self._items:
            raise OutputsError(f"{view.key}: not in {self.pairs_root}")
        return self._items[view]

    def output_file(self, view: ViewKey, method: str) -> Path | None:
        return self._outputs.get(view, {}).get(method)

    def metrics(self, view: ViewKey) -> dict[str, dict]:
        """Per-image metrics from the run's metrics JSON: ``{"degraded": {...}, method: {...}}`` (may be empty)."""
        return self._metrics.get((view.dataset, view.scene, view.rate, view.split, view.name), {})

    def load(self, view: ViewKey | None = None, methods: Sequence[str] | None = None) -> ViewImages:
        """``(clean, degraded, {method: restored})`` of one view; sizes are checked against the clean frame."""
        view = view or self.view()
        item = self.pair_item(view)
        clean, deg = _load(item.clean), _load(item.degraded)
        if clean.shape != deg.shape:
            raise OutputsError(f"{item.degraded}: {deg.shape[1]}x{deg.shape[0]} but {item.clean} is "
                               f"{clean.shape[1]}x{clean.shape[0]}")
        wanted = self.methods_for(view) if methods is None else list(methods)
        restored = {}
        for m in wanted:
            p = self.output_file(view, m)
            if p is None:
                if methods is not None:
                    raise OutputsError(f"{view.key}: no output of method '{m}' under {self.outputs_root} "
                                       f"(expected {output_path(self.outputs_root or Path('<outputs>'), m, view.key)})")
                continue
            img = _load(p)
            if img.shape != clean.shape:
                raise OutputsError(f"{p}: {img.shape[1]}x{img.shape[0]} but the clean frame {item.clean} is "
                                   f"{clean.shape[1]}x{clean.shape[0]}")
            restored[m] = img
        return ViewImages(view, clean, deg, restored, self.metrics(view))

    def load_rate(self, rate: str, methods: Sequence[str] | None = None, max_views: int | None = None,
                  per_scene: int | None = None) -> list[ViewImages]:
        """Views of one rate over all scenes (``per_scene`` views at most per scene, ``max_views`` in all)."""
        out: list[ViewImages] = []
        counts: dict[tuple, int] = {}
        for v in self._filter(rate=rate):
            k = (v.dataset, v.scene)
            if per_scene is not None and counts.get(k, 0) >= per_scene:
                continue
            counts[k] = counts.get(k, 0) + 1
            out.append(self.load(v, methods=[m for m in methods if m in self.methods_for(v)] if methods else None))
            if max_views is not None and len(out) >= max_views:
                break
        return out


def _rate_key(r: str) -> tuple:
    try:
        return (0, float(r), r)
    except ValueError:
        return (1, 0.0, r)


def _read_records(path: Path | None) -> list[dict] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise OutputsError(f"{path}: cannot read metrics JSON ({e})") from e
    recs = data.get("records") or []
    single = ((data.get("config") or {}).get("method") or {}).get("name")   # nifi eval: one method, no field
    return [{**r, "method": r.get("method") or single} for r in recs if isinstance(r, dict)]


# ------------------------------------------------------------------------------------------------
# run folders and the demo run
# ------------------------------------------------------------------------------------------------
@dataclass
class RunPaths:
    """Where a run's pairs, outputs and metrics are; ``demo`` says it was built by :func:`build_demo_run`."""

    run_dir: Path
    pairs_root: Path
    outputs_root: Path | None
    metrics_json: Path | None = None
    demo: bool = False
    note: str = ""


def resolve_run(run_dir: str | Path, pairs_dir: str | Path | None = None,
                outputs_dir: str | Path | None = None) -> RunPaths | None:
    """The paths of a run folder, or ``None`` when it has no pairs and no outputs to show.

    ``pairs_dir``/``outputs_dir`` override ``<run_dir>/pairs`` and ``<run_dir>/outputs``; without ``pairs/``
    the metrics JSON's ``config.data_root`` (or ``outputs.json``'s ``pairs_root``) names the pair root.
    """
    run = repo_path(run_dir)
    metrics = next((run / n for n in METRICS_FILES if (run / n).is_file()), None)
    outputs = repo_path(outputs_dir) if outputs_dir else run / "outputs"
    if pairs_dir:
        pairs = repo_path(pairs_dir)
    elif (run / "pairs").is_dir():
        pairs = run / "pairs"
    else:
        pairs = None
        for src, keys in (((outputs / OUTPUTS_MANIFEST), ("pairs_root",)), (metrics, ("config", "data_root"))):
            if src is not None and Path(src).is_file():
                try:
                    node = json.loads(Path(src).read_text())
                    for k in keys:
                        node = node[k]
                    pairs = repo_path(node)
                    break
                except (OSError, json.JSONDecodeError, KeyError, TypeError):
                    continue
    if pairs is None or not pairs.is_dir():
        return None
    return RunPaths(run, pairs, outputs if outputs.is_dir() else None, metrics)


DEMO_MARKER = "demo_run.json"


def build_demo_run(demo_dir: str | Path, scenes: Sequence[str] = ("boxes",), rates: Sequence[str] = ("0.1", "0.5", "1.0"),
                   methods: Sequence[str] = ("none", "bm3d", "ffdnet"), split: str = "test",
                   scene_root: str | Path = "data/embedded/scenes", metrics: Sequence[str] = ("psnr", "ssim"),
                   overwrite: bool = False, progress: bool = False) -> RunPaths:
    """A tiny run to look at: proxy pairs of embedded scenes + restored frames of CPU baselines.

    ``demo_dir/pairs/embedded/<scene>/rate_<label>/<split>/`` are proxy degradations
    (:mod:`nifi_lib.synthesis.proxy`, NOT the codec), ``demo_dir/outputs/`` the ``--save_outputs`` folder of
    :func:`nifi_lib.evaluation.benchmark.run_benchmark` and ``demo_dir/benchmark_metrics.json`` its metrics.
    Methods that cannot be created here (e.g. missing weights offline) are skipped and named in the note.
    Reused when ``demo_dir/demo_run.json`` records the same settings.
    """
    from ..synthesis.pipeline import proxy_pairs
    from .baselines import create_method
    from .benchmark import run_benchmark

    demo = repo_path(demo_dir)
    settings = {"scenes": list(scenes), "rates": [str(r) for r in rates], "methods": list(methods), "split": split,
                "scene_root": _display(repo_path(scene_root)), "metrics": list(metrics), "version": 1}
    marker = demo / DEMO_MARKER
    if not overwrite and marker.is_file():
        try:
            old = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("settings") == settings:
            return RunPaths(demo, demo / "pairs", demo / "outputs", demo / "benchmark_metrics.json", True,
                            old.get("note", ""))
    if marker.exists():
        marker.unlink()
    for s in scenes:
        src = repo_path(scene_root) / s
        if not src.is_dir():
            raise OutputsError(f"{src}: demo scene not found")
        proxy_pairs(src, demo / "pairs" / "embedded" / s, [str(r) for r in rates], split, progress=progress)
    instances, skipped = {}, []
    for name in methods:
        try:
            m = create_method(name)
        except NifiError as e:
            skipped.append(f"{name} ({str(e).splitlines()[0][:120]})")
            continue
        instances[m.name] = m
    run_benchmark(demo / "pairs", split=split, out=demo / "benchmark_metrics.json", metric_names=metrics,
                  save_restored=demo / "outputs", progress=progress, method_instances=instances)
    note = ("demo run: proxy degradations of the embedded scenes (not the codec) restored by "
            f"{', '.join(instances)}" + (f"; skipped {'; '.join(skipped)}" if skipped else ""))
    atomic_write_json(marker, {"settings": settings, "note": note, "methods": list(instances)})
    return RunPaths(demo, demo / "pairs", demo / "outputs", demo / "benchmark_metrics.json", True, note)


def ensure_demo_run(run_dir: str | Path = "runs/embedded", pairs_dir: str | Path | None = None,
                    outputs_dir: str | Path | None = None, demo_dir: str | Path = "runs/08_visual_demo",
                    log=print, **demo_options) -> RunPaths:
    """The run to look at: ``run_dir`` if it holds pairs (and outputs), else a demo run built in ``demo_dir``.

    The demo never writes into ``run_dir`` (notebook 06 owns it). ``demo_options`` go to :func:`build_demo_run`.
    """
    paths = resolve_run(run_dir, pairs_dir, outputs_dir)
    if paths is not None and paths.outputs_root is not None:
        paths.note = f"run {_display(paths.run_dir)}"
        return paths
    why = (f"{_display(repo_path(run_dir))} has pairs but no restored frames (run `nifi benchmark ... "
           f"--save_outputs`)" if paths is not None else f"{_display(repo_path(run_dir))} has no run yet")
    log(f"{why}; using a demo run in {_display(repo_path(demo_dir))}")
    return build_demo_run(demo_dir, **demo_options)


__all__ = ["OutputsError", "RunIndex", "ViewKey", "ViewImages", "RunPaths", "output_path", "resolve_run",
           "write_outputs_manifest", "build_demo_run", "ensure_demo_run", "OUTPUTS_MANIFEST",
           "method_sort_key"]
