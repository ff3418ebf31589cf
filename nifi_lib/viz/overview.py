"""Notebook 00: the pipeline diagram (Nix: compress and render; Fix: restore each frame), the paper's
configuration beside this run's, and the ``nifi`` subcommands."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

STAGES = [
    ("3DGS scene G\n(N primitives)", "gs/"),
    ("prune to L=3 levels\n(GoDe importance)", "synthesis/prune"),
    ("8-bit quantize +\nentropy code (MB)", "synthesis/codec"),
    ("render I~\n(artifacts)", "gs/render"),
    ("E -> x~ -> x~_t0\n(Eq. 2)", "restoration/"),
    ("one step with phi-\n(Eq. 7) -> D(x^)", "restoration/"),
]


def pipeline_diagram():
    fig, ax = plt.subplots(figsize=(12, 2.4))
    ax.set_xlim(0, len(STAGES) * 2)
    ax.set_ylim(0, 2.4)
    ax.axis("off")
    for i, (label, module) in enumerate(STAGES):
        color = "#dbe9f6" if i < 4 else "#fde0dd"
        ax.add_patch(FancyBboxPatch((i * 2 + 0.1, 0.6), 1.7, 1.2, boxstyle="round,pad=0.05", fc=color, ec="k"))
        ax.text(i * 2 + 0.95, 1.2, label, ha="center", va="center", fontsize=8)
        ax.text(i * 2 + 0.95, 0.35, f"nifi_lib/{module}", ha="center", va="center", fontsize=7, color="#555")
        if i:
            ax.add_patch(FancyArrowPatch((i * 2 - 0.12, 1.2), (i * 2 + 0.1, 1.2), arrowstyle="->", mutation_scale=12))
    ax.text(3.9, 2.15, "Nix: artifact synthesis (Sec. 3)", ha="center", fontsize=10, color="#1f4e79")
    ax.text(9.9, 2.15, "Fix: artifact restoration (Sec. 3, Eq. 7)", ha="center", fontsize=10, color="#a50f15")
    return fig


CONFIG_SECTIONS = ("model", "diffusion", "train", "loss_weights")


def config_comparison(paper, ours, sections=CONFIG_SECTIONS) -> list[tuple[str, object, object, bool]]:
    """``(section.key, paper value, our value, overridden)`` for every key of ``sections`` of two configs."""
    rows = []
    for section in sections:
        for key, value in getattr(paper, section).__dict__.items():
            mine = getattr(getattr(ours, section), key)
            rows.append((f"{section}.{key}", value, mine, mine != value))
    return rows


def format_config_comparison(rows: list[tuple[str, object, object, bool]]) -> str:
    """The rows of :func:`config_comparison` as an aligned table; overridden keys are marked."""
    width = max(len(r[0]) for r in rows)
    lines = [f"{'key':<{width}}  {'paper':>30}  {'this run':>30}"]
    lines += [f"{k:<{width}}  {str(p):>30}  {str(o):>30}  {'<- overridden' if changed else ''}"
              for k, p, o, changed in rows]
    return "\n".join(lines)


def format_subcommands(parser) -> str:
    """One line per subcommand of an argparse ``parser`` (``nifi_lib.cli.build_parser()``): name and help."""
    sub = next(a for a in parser._actions if a.dest == "command")
    return "\n".join(f"nifi {action.dest:<18} {action.help}" for action in sub._choices_actions)
