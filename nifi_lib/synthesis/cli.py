"""``nifi synthesize``, ``nifi pairs`` and ``nifi prepare-benchmark`` (Sec. 3 Artifact Synthesis).

Seed contract::

    nifi synthesize --scene data/mipnerf360/garden --rates 0.1 0.5 1.0 --out artifacts/garden/
    nifi pairs --scene artifacts/garden/ --split train --out pairs/garden/train/
    nifi pairs --scene artifacts/garden/ --split test --out pairs/garden/
    nifi prepare-benchmark --dataset mipnerf360 --dataset_root data/benchmarks/mipnerf360 \\
        --out pairs/benchmarks --rates 0.1 0.5 1.0 --compression_method proxy

``nifi pairs --out``: the scene's pair folder; a trailing split component is dropped, so both seed
invocations write ``pairs/garden/rate_<label>/<split>/{clean,degraded}/`` and ``pairs/garden/manifest.json``.
``prepare-benchmark`` writes ``<out>/<dataset>/<scene>/rate_<label>/<split>/...`` + ``manifest.json``.
Rate labels: 0.1 = largest level G_2 (highest rate), 0.5 = G_1, 1.0 = G_0 (c_min primitives).
"""
from __future__ import annotations

import argparse

from .pipeline import (MODES, SynthesisSettings, codec_pairs, prepare_benchmark, synthesize_scene)
from .schedule import PAPER_C_MIN, PAPER_RATE_LABELS


def _background(value: str | None):
    if value is None:
        return None
    named = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
    if value in named:
        return named[value]
    parts = [float(x) for x in value.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("--background: white, black or r,g,b in [0, 1]")
    return tuple(parts)


def _settings(args: argparse.Namespace) -> SynthesisSettings:
    levels = getattr(args, "levels", None)
    rates = None if levels is not None else [str(r) for r in args.rates]
    return SynthesisSettings(
        c_min=args.c_min, num_levels=levels if levels is not None else len(rates), rates=rates, n_top=args.n_top,
        fit_iterations=args.fit_iterations, finetune_iterations=args.finetune_iterations,
        importance_views=args.importance_views, backend=args.backend, seed=args.seed, background=args.background,
        downscale=getattr(args, "downscale", None), device=args.device)


def _add_synthesis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--c_min", type=int, default=PAPER_C_MIN, help="size of the smallest level G_0 (paper: 4096)")
    p.add_argument("--n_top", type=int, default=None,
                   help="size of the largest pruned level (default: a quarter of the dense model)")
    p.add_argument("--fit_iterations", type=int, default=3000, help="iterations of the dense fit (no PLY given)")
    p.add_argument("--finetune_iterations", type=int, default=300, help="fine-tuning iterations per level")
    p.add_argument("--importance_views", type=int, default=None, help="training views used for importance (default all)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "gsplat"), help="renderer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--background", type=_background, default=None,
                   help="white, black or r,g,b (default: white for Blender scenes, black otherwise)")


def _db(value) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


def _cmd_synthesize(args: argparse.Namespace) -> int:
    meta = synthesize_scene(args.scene, args.out, _settings(args), ply=args.ply, overwrite=args.overwrite,
                            transforms=args.transforms)
    print(f"{args.out}: {meta['num_gaussians_full']} Gaussians -> "
          + ", ".join(f"rate {lv['label']}: {lv['num_gaussians']} ({lv['bytes']} B)" for lv in meta["levels"]))
    print(f"{args.out}: dense model PSNR {_db(meta.get('full_psnr_test'))} on the test views "
          f"(train {_db(meta.get('full_psnr_train'))}); decoded levels on the test views: "
          + ", ".join(f"rate {lv['label']} {_db(lv.get('psnr_test'))}" for lv in meta["levels"]))
    return 0


def _splits(split: str) -> list[str]:
    """``all`` means both folders ``nifi train``/``nifi eval`` read (train/ and test/), never a folder ``all/``."""
    return ["train", "test"] if split == "all" else [split]


def _cmd_pairs(args: argparse.Namespace) -> int:
    for split in _splits(args.split):
        m = codec_pairs(args.scene, split, args.out, backend=args.backend, overwrite=args.overwrite,
                        device=args.device, downscale=args.downscale)
    for lv in m["levels"]:
        print(f"rate {lv['label']}: {lv['num_gaussians']} Gaussians, {lv['bytes']} B, PSNR {lv['psnr']:.2f} dB "
              f"({lv['psnr_split']})")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    s = _settings(args)
    for split in _splits(args.split):
        res = prepare_benchmark(args.dataset, args.dataset_root, args.out, [str(r) for r in args.rates],
                                args.compression_method, compressed_root=args.compressed_root, shard=args.shard,
                                split=split, downscale=args.downscale, settings=s,
                                artifacts_root=args.artifacts_root, overwrite=args.overwrite)
    done = sum(r["status"] == "done" for r in res)
    print(f"{args.dataset}: {done} scene(s) written, {len(res) - done} already complete")
    return 0


def register(sub) -> None:
    p = sub.add_parser("synthesize", help="dense 3DGS -> pruned, fine-tuned, 8-bit + entropy-coded levels (Sec. 3)")
    p.add_argument("--scene", required=True,
                   help="scene folder: Blender, embedded cameras.json, COLMAP, LLFF (poses_bounds.npy), nerfstudio "
                        "transforms.json, or an INRIA 3DGS output folder (its PLY is the dense model)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rates", nargs="+", default=list(PAPER_RATE_LABELS),
                   help="rate labels (lambda names); one level per rate, 0.1 = largest level")
    g.add_argument("--levels", type=int, default=None, help="number of levels L (labels: paper names for L = 3)")
    p.add_argument("--out", required=True, help="artifact folder, e.g. artifacts/<scene>/")
    p.add_argument("--ply", default=None,
                   help="pretrained dense 3DGS: a PLY, an INRIA 3DGS output folder, a nerfstudio splatfacto export "
                        "(PLY + dataparser_transforms.json) or a gsplat checkpoint .pt (default: the scene's own: an "
                        "INRIA output's PLY or <scene>/point_cloud.ply, else fit)")
    p.add_argument("--transforms", default=None,
                   help="frame transform of --ply to undo: nerfstudio's dataparser_transforms.json (found next to "
                        "the PLY when not given) or a 4x4 similarity (JSON/.npy, x_model = T x_scene; gsplat's "
                        "normalize_world_space)")
    p.add_argument("--downscale", type=int, default=None, choices=(1, 2, 4, 8),
                   help="use images_<d>/ of COLMAP, LLFF, INRIA-source and nerfstudio scenes (default: images/, else "
                        "the finest images_<d>/ there is)")
    p.add_argument("--overwrite", action="store_true", help="redo even if a complete synthesis exists")
    _add_synthesis_options(p)
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("pairs", help="render the decoded levels: pairs/<scene>/rate_<label>/<split>/{clean,degraded}")
    p.add_argument("--scene", required=True, help="artifact folder written by `nifi synthesize`")
    p.add_argument("--split", default="train", choices=("train", "test", "all"),
                   help="views to render; all = both train/ and test/ (default: %(default)s)")
    p.add_argument("--out", required=True, help="pairs/<scene>/ (a trailing /<split>/ is accepted and dropped)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "gsplat"))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--downscale", type=int, default=None, choices=(1, 2, 4, 8),
                   help="render at the views of images_<d>/ (default: the resolution `nifi synthesize` used)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_pairs)

    p = sub.add_parser("prepare-benchmark", help="pairs for every scene of a benchmark dataset (resumable, shardable)")
    p.add_argument("--dataset", required=True, help="dataset name (output sub-folder), e.g. mipnerf360")
    p.add_argument("--dataset_root", required=True, help="folder with one sub-folder per scene")
    p.add_argument("--out", required=True, help="pairs root; writes <out>/<dataset>/<scene>/...")
    p.add_argument("--rates", nargs="+", default=list(PAPER_RATE_LABELS))
    p.add_argument("--compression_method", default="proxy", choices=MODES)
    p.add_argument("--compressed_root", default=None,
                   help="precomputed renders: <compressed_root>/<scene>/rate_<label>/<split>/*.png")
    p.add_argument("--shard", default=None, help="i/n: only scenes i, i+n, ... (sorted by name)")
    p.add_argument("--split", default="test", choices=("train", "test", "all"),
                   help="views to write; all = both train/ and test/ (default: %(default)s)")
    p.add_argument("--downscale", type=int, default=None, choices=(1, 2, 4, 8),
                   help="use images_<d>/ of every scene (default: per scene, the 3DGS convention: Mip-NeRF360 "
                        "outdoor images_4, indoor images_2, other datasets images/)")
    p.add_argument("--artifacts_root", default="artifacts/benchmarks", help="nifi-codec: where artifacts go")
    p.add_argument("--overwrite", action="store_true")
    _add_synthesis_options(p)
    p.set_defaults(func=_cmd_benchmark)
