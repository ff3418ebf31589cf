"""The codec table of docs/codec.md: ``.nifigs`` versions 1, 2 and 3 on the levels of a dense scene.

``python -m nifi_lib.bench.codec_bench --scene <scene> --ply <dense.ply>`` prunes the dense model to the levels of
the schedule (GoDe importance, as ``nifi synthesize``), fine-tunes each level twice (plain, then
quantization-aware for version 3, as the pipeline does) and prints, per level, bytes per Gaussian of each version
(headers and tables included), the test PSNR of the float level and of each decoded file, and version 3's bytes per
attribute group. Version 1 and version 2 (its own encoder defaults, ``compact.v2_settings``) code the plainly
fine-tuned level; version 3 codes both the plainly tuned level ("no QAT") and the quantization-aware one.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def run(scene_dir: str, ply: str, sizes: list[int] | None, iterations: int, importance_views: int,
        budget: float, backend: str = "torch", seed: int = 0, log=print) -> list[dict]:
    from ..gs.model import load_ply
    from ..synthesis import codec, compact
    from ..synthesis.finetune import finetune
    from ..synthesis.importance import gode_importance, prune_top_k
    from ..synthesis.pipeline import SynthesisSettings, _level_codec, _subsample, model_psnr
    from ..synthesis.quantize import morton_order
    from ..synthesis.schedule import PAPER_C_MIN, level_sizes
    from ..synthesis.scene import open_scene

    scene = open_scene(scene_dir, require_cameras=True)
    train = scene.views("train")
    cams, imgs = [v.camera for v in train], scene.load_images(train)
    full = load_ply(ply)
    sizes = sizes or level_sizes(full.num_gaussians, PAPER_C_MIN, 3)
    t0 = time.perf_counter()
    pick = _subsample(len(train), importance_views)
    imp = gode_importance(full, [cams[i] for i in pick], imgs[pick], background=scene.background, backend=backend,
                          progress=False)
    log(f"dense {full.num_gaussians} Gaussians (SH degree {full.sh_degree}); importance over {len(pick)} views in "
        f"{time.perf_counter() - t0:.0f} s; levels {sizes}")
    s = SynthesisSettings(budget_bytes_per_gaussian=budget, seed=seed, backend=backend, device="cpu",
                          finetune_iterations=iterations, codec_version=3)

    def decoded_psnr(path: Path) -> float:
        return model_psnr(codec.read_level(path), scene, "test", backend, "cpu")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for l, k in enumerate(sizes):
            t0 = time.perf_counter()
            pruned, _ = prune_top_k(full, imp, k)
            row = {"level": l, "num_gaussians": k}
            plain, _ = finetune(pruned, cams, imgs, iterations, background=scene.background, backend=backend,
                                seed=seed + l, progress=False)
            plain = plain.subset(morton_order(plain))
            row["psnr_float"] = model_psnr(plain, scene, "test", backend, "cpu")
            v1 = codec.write_level(plain, Path(tmp) / "v1.nifigs", version=1)
            row["v1_bytes"], row["v1_psnr"] = v1.bytes, decoded_psnr(Path(tmp) / "v1.nifigs")
            plan2 = codec.plan_level(pruned, compact.v2_settings(seed=seed), budget)
            v2 = codec.write_level(plain, Path(tmp) / "v2.nifigs", version=2, settings=plan2,
                                   budget_bytes_per_gaussian=budget)
            row["v2_bytes"], row["v2_psnr"] = v2.bytes, decoded_psnr(Path(tmp) / "v2.nifigs")
            plan, quantizer = _level_codec(s, pruned)
            v3 = codec.write_level(plain, Path(tmp) / "v3.nifigs", version=3, settings=plan,
                                   budget_bytes_per_gaussian=budget)
            row["v3_noqat_bytes"], row["v3_noqat_psnr"] = v3.bytes, decoded_psnr(Path(tmp) / "v3.nifigs")
            qat, _ = finetune(pruned, cams, imgs, iterations, background=scene.background, backend=backend,
                              seed=seed + l, progress=False, quantizer=quantizer)
            qat = qat.subset(morton_order(qat))
            row["qat_psnr_float"] = model_psnr(qat, scene, "test", backend, "cpu")
            v3q = codec.write_level(qat, Path(tmp) / "v3q.nifigs", version=3, settings=plan,
                                    budget_bytes_per_gaussian=budget)
            row["v3_bytes"], row["v3_breakdown"], row["v3_settings"] = v3q.bytes, v3q.breakdown, v3q.codec_settings
            row["v3_psnr"] = decoded_psnr(Path(tmp) / "v3q.nifigs")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log(json.dumps(row))
    return rows


def table(rows: list[dict]) -> str:
    """Markdown tables of :func:`run`'s rows."""
    head = ("| level | Gaussians | v1 B/G | v2 B/G | v3 B/G | PSNR float | PSNR v1 | PSNR v2 | PSNR v3 (no QAT) "
            "| PSNR float (QAT) | PSNR v3 (QAT) | v3 (QAT) - float | v3 SH rest (degree, rows) |\n|" + "---|" * 13)
    lines = [head]
    for r in rows:
        n = r["num_gaussians"]
        st = r["v3_settings"]
        lines.append(f"| {r['level']} | {n:,} | {r['v1_bytes'] / n:.2f} | {r['v2_bytes'] / n:.2f} | "
                     f"{r['v3_bytes'] / n:.2f} | {r['psnr_float']:.2f} | {r['v1_psnr']:.2f} | {r['v2_psnr']:.2f} | "
                     f"{r['v3_noqat_psnr']:.2f} | {r['qat_psnr_float']:.2f} | {r['v3_psnr']:.2f} | "
                     f"{r['v3_psnr'] - r['psnr_float']:+.2f} | "
                     f"{st['rest_degree']}, {st['codebook_size'] if st['rest_degree'] else 0} |")
    groups = list(rows[0]["v3_breakdown"]) if rows else []
    lines += ["", "| level | " + " | ".join(f"{g} (B/G)" for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for r in rows:
        n = r["num_gaussians"]
        lines.append(f"| {r['level']} | " + " | ".join(f"{r['v3_breakdown'][g] / n:.2f}" for g in groups) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", required=True)
    p.add_argument("--ply", required=True, help="the dense model (e.g. from `nifi fit`)")
    p.add_argument("--sizes", type=int, nargs="*", default=None, help="level sizes (default: the paper's schedule)")
    p.add_argument("--iterations", type=int, default=300, help="fine-tuning iterations per level")
    p.add_argument("--importance-views", type=int, default=25)
    p.add_argument("--budget", type=float, default=12.0, help="bytes per Gaussian of versions 2 and 3")
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = run(a.scene, a.ply, a.sizes, a.iterations, a.importance_views, a.budget, a.backend)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
