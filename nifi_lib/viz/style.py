"""One figure style for the series, defined once; every figure is also written to <figures_dir>/<name>.png
(``figures/`` for ``make run``; the smoke profile of the tests writes under ``runs/``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from ..paths import FIGURES_DIR, figures_dir  # noqa: F401 (FIGURES_DIR: the default)

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "image.cmap": "viridis",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
DIFF_CMAP = "magma"          # difference maps
METHOD_COLORS = {            # one colour per method across all plots
    "none": "#7f7f7f", "bm3d": "#8c564b", "ffdnet": "#e377c2", "img2img": "#bcbd22", "base_t0": "#9467bd",
    "nifi": "#d62728", "nifi_wo_t0": "#ff9896", "precomputed": "#17becf", "uncompressed": "#1f77b4",
}
PANEL_INCH = 2.4             # width of one image panel in grids


def apply_style() -> None:
    """Apply the series' matplotlib style (call once at the top of a notebook); also silences the
    known-harmless library warnings of :mod:`nifi_lib.warnings_policy` in the notebook's kernel."""
    from ..warnings_policy import install_known_harmless_filters

    matplotlib.rcParams.update(STYLE)
    install_known_harmless_filters()


def save_figure(fig, name: str, folder: str | Path | None = None) -> Path:
    """Write ``fig`` to ``<folder>/<name>.png`` (stable name so batch reruns refresh it); return the path.

    ``folder`` None: ``$NIFI_FIGURES_DIR`` if set, else ``figures/``; a relative folder is taken from the repo
    root (nbval runs kernels in the notebook's folder). Notebooks pass their ``figures_dir`` parameter.
    """
    from ..io.atomic import atomic_path

    folder = figures_dir(folder)
    path = folder / f"{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


@dataclass
class FigureLog:
    """The figures one notebook writes: ``save(fig, what)`` is :func:`save_figure` as ``<prefix>_<what>`` in
    ``folder`` (the figure stays open, so the notebook shows it), and the paths are kept in order."""

    prefix: str
    folder: str | Path | None = None
    paths: list[Path] = field(default_factory=list)

    def save(self, fig, what: str) -> Path:
        path = save_figure(fig, f"{self.prefix}_{what}", self.folder)
        self.paths.append(path)
        return path

    def summary(self) -> str:
        """"figures written:" and one path per line, relative to the repository when inside it."""
        from ..paths import REPO_ROOT

        rel = [p.relative_to(REPO_ROOT) if p.is_relative_to(REPO_ROOT) else p for p in self.paths]
        return "\n".join(["figures written:"] + [f"   {p}" for p in rel])
