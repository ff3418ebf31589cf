"""``nifi embed-prompts`` (prompt .npz from the backbone's text encoders) and ``nifi backbone build-random``."""
from __future__ import annotations

import argparse

from ..paths import repo_path, resolve_model_ref


def _device(name: str | None) -> str:
    from ..devices import default_device

    return default_device(name)


def cmd_embed_prompts(args: argparse.Namespace) -> int:
    from .text_encoding import embed_prompts_to_npz

    summary = embed_prompts_to_npz(resolve_model_ref(args.base_model), repo_path(args.out), prompt=args.prompt,
                                   prompts_json=repo_path(args.prompts) if args.prompts else None,
                                   device=_device(args.device), dtype=args.dtype)
    n = len(summary["files"])
    print(f"wrote {n} prompt-embedding file{'s' if n != 1 else ''} ({summary['prompt_embeds']} + pooled "
          f"{summary['pooled_prompt_embeds']}, with the null prompt) to {args.out}")
    return 0


def cmd_build_random(args: argparse.Namespace) -> int:
    from .sd3_random import build_random_sd3, folder_size_bytes

    out = repo_path(args.out)
    info = build_random_sd3(out, shape=args.shape, seed=args.seed, text_encoder_layers=args.text_encoder_layers,
                            overwrite=args.overwrite, progress=lambda m: print(f"  building {m}", flush=True))
    total = sum(info["parameters"].values())
    print(f"random SD3 ({args.shape}, seed {args.seed}) written to {args.out}: {total / 1e6:.1f}M parameters, "
          f"{folder_size_bytes(out) / 2**20:.1f} MiB, {info['seconds']} s. Random weights: rehearsal only.")
    return 0


def register(sub) -> None:
    e = sub.add_parser("embed-prompts", help="prompt embeddings (.npz, authors' layout + null prompt) from the "
                                             "backbone's text encoders")
    e.add_argument("--base_model", required=True, help="diffusers SD3 folder or Hub id (with text_encoder*/)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--prompt", default=None, help="the prompt text (default: the authors' default prompt)")
    g.add_argument("--prompts", default=None, help="{scene: prompt} JSON (nifi prompts): one .npz per scene")
    e.add_argument("--out", required=True, help="FILE.npz for one prompt; a folder with --prompts")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    e.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="text-encoder dtype (auto: bf16 on CUDA, fp32 on CPU); the files are float32")
    e.set_defaults(func=cmd_embed_prompts)

    b = sub.add_parser("backbone", help="backbone utilities")
    bsub = b.add_subparsers(dest="backbone_command", metavar="ACTION")
    r = bsub.add_parser("build-random", help="a random-weight SD3 folder with the real class structure "
                                             "(text encoders included), for rehearsal")
    r.add_argument("--shape", default="tiny", choices=["tiny", "sd3-medium"])
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--text_encoder_layers", type=int, default=None, help="depth of the text encoders (default 2)")
    r.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    r.set_defaults(func=cmd_build_random)
    b.set_defaults(func=lambda a: (b.print_help(), 1)[1])
