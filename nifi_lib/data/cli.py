"""``nifi download`` (benchmark archives, DL3DV ingest) and ``nifi prompts`` (per-scene captions)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .registry import DATASETS, MIPNERF360_SCENES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "download", help="download benchmark datasets (Mip-NeRF360, Tanks&Temples, DeepBlending) or ingest DL3DV",
        description="Download and extract the benchmark datasets into <out>/<dataset>/<scene>/ (resumable, "
                    "verified, idempotent), or ingest a local DL3DV subset into <out>/dl3dv/.")
    p.add_argument("--dataset", required=True, choices=[*DATASETS, "all", "dl3dv"])
    p.add_argument("--out", default=None, help="output folder (default: data/benchmarks, or data for dl3dv)")
    p.add_argument("--mip_scenes", nargs="+", default=None, metavar="SCENE",
                   help=f"Mip-NeRF360 subset ({' '.join(MIPNERF360_SCENES)}); default: all nine")
    p.add_argument("--mirror", default=None, metavar="URL_OR_DIR",
                   help="base URL (or local folder) holding the archives under their usual file names")
    p.add_argument("--delete_archives", action="store_true", help="delete each archive after a successful extraction")
    p.add_argument("--retries", type=int, default=5, help="attempts without progress before giving up (default 5)")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time")
    p.add_argument("--timeout", type=float, default=60.0, help="network time-out in seconds")
    p.add_argument("--dl3dv_source", default=None, metavar="DIR", help="local DL3DV subset (for --dataset dl3dv)")
    p.add_argument("--dl3dv_mode", choices=["symlink", "copy"], default="symlink",
                   help="link (default) or copy the DL3DV image folders")
    p.add_argument("--dl3dv_limit", type=int, default=None, metavar="N", help="ingest at most N DL3DV scenes")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_download)

    q = subparsers.add_parser(
        "prompts", help="caption each scene's first training frame with a vision-language model",
        description="Write {scene: prompt} for every scene below --data_root, captioning the first training frame "
                    "with a vision-language model (the paper: Qwen2.5-VL).")
    q.add_argument("--data_root", required=True, help="folder with scene folders (or pair folders)")
    q.add_argument("--model", default="Qwen/Qwen2.5-VL-7B-Instruct", help="Hub id or local folder")
    q.add_argument("--out", default=None, help="output JSON (default: <data_root>/prompts.json)")
    q.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    q.add_argument("--instruction", default="Describe this scene in one sentence.")
    q.add_argument("--max_new_tokens", type=int, default=77)
    q.add_argument("--split", choices=["train", "all"], default="train",
                   help="caption the first frame of the training split (default) or the very first frame")
    q.add_argument("--overwrite", action="store_true", help="caption again scenes already in --out")
    q.add_argument("--no_progress", action="store_true")
    q.set_defaults(func=cmd_prompts)


def cmd_download(args: argparse.Namespace) -> int:
    from .download import DownloadError

    if args.dataset == "dl3dv":
        from .dl3dv import ingest_dl3dv

        if not args.dl3dv_source:
            raise DownloadError("--dataset dl3dv needs --dl3dv_source DIR (DL3DV is gated and not downloaded by nifi; "
                                "see docs/datasets.md for how to get it)")
        out = Path(args.out or "data")
        index = ingest_dl3dv(args.dl3dv_source, out, mode=args.dl3dv_mode, limit=args.dl3dv_limit,
                             progress=not args.no_progress)
        print(f"DL3DV: {index['num_scenes']} scene(s) in {out / 'dl3dv'} (index: {out / 'dl3dv' / 'index.json'})")
        for s in index["skipped"]:
            print(f"  skipped {s['scene']}: {s['reason']}", file=sys.stderr)
        return 0
    if args.dl3dv_source:
        raise DownloadError("--dl3dv_source is only used with --dataset dl3dv")
    from .download import download_benchmarks

    out = Path(args.out or "data/benchmarks")
    result = download_benchmarks(out, args.dataset, mip_scenes=args.mip_scenes, mirror=args.mirror,
                                 keep_archives=not args.delete_archives, retries=args.retries,
                                 backoff=args.backoff, timeout=args.timeout, progress=not args.no_progress)
    for dataset, scenes in result.items():
        print(f"{dataset}: {len(scenes)} scene(s) in {out / dataset}: {' '.join(s.name for s in scenes)}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from .prompts import caption_scenes

    out = Path(args.out) if args.out else Path(args.data_root) / "prompts.json"
    prompts = caption_scenes(args.data_root, model=args.model, out=out, device=args.device,
                             instruction=args.instruction, max_new_tokens=args.max_new_tokens,
                             overwrite=args.overwrite, progress=not args.no_progress, split=args.split)
    print(f"{len(prompts)} prompt(s) written to {out}")
    return 0
