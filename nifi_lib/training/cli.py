"""``nifi prior train``, ``nifi train`` (the seed's train_nifi.py) and ``nifi verify``."""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

from ..config import load_config, parse_override
from ..paths import EMBEDDED_DIR, repo_path


def scene_view_paths(patterns: list[str], split: str) -> list[Path]:
    """The image files of the ``split`` views of every scene folder matching ``patterns`` (globs, sorted)."""
    from ..data.scenes import load_scene

    paths: list[Path] = []
    for pattern in patterns:
        for scene in sorted(glob.glob(str(repo_path(pattern)))):
            paths += [c.image_path for c in load_scene(scene, split=split)]
    return paths


PRIOR_FLAGS = ("vae_steps", "transformer_steps", "seed", "resolution", "vae_lr", "vae_gan_weight")


def prior_config_from_args(args: argparse.Namespace):
    """``--config`` (a YAML of PriorConfig fields; none: today's defaults) with the explicit flags on top (the
    PriorConfig fields of :data:`PRIOR_FLAGS` that the command has and were given)."""
    from ..diffusion.prior import PriorConfig, load_prior_config

    flags = {k: getattr(args, k, None) for k in PRIOR_FLAGS}
    if args.config:
        return load_prior_config(repo_path(args.config), **flags)
    return PriorConfig(**{k: v for k, v in flags.items() if v is not None})


def _prior_images(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """The training views of ``--scenes`` (the held-out test views stay unseen by the prior too) and the held-out
    images (every view of ``--heldout``; given, even empty, also the test views of ``--scenes``); applies
    ``--threads``."""
    from ..errors import NifiError

    folders = scene_view_paths(args.scenes, "train")
    if not folders:
        raise NifiError(f"no scenes match {args.scenes} (build the embedded scenes with `nifi scenes build`)")
    heldout = scene_view_paths(args.heldout, "all") if args.heldout else []
    heldout += scene_view_paths(args.scenes, "test") if args.heldout is not None else []
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return folders, heldout


def cmd_prior_finetune_decoder(args: argparse.Namespace) -> int:
    from ..diffusion.prior import finetune_decoder

    folders, heldout = _prior_images(args)
    bb = finetune_decoder(repo_path(args.prior), folders, repo_path(args.out), prior_config_from_args(args),
                          device=args.device,
                          heldout_sources=heldout or None)
    run = bb.info["decoder_finetune"]
    held = (f", held-out vae psnr {run['heldout_vae_psnr_before']:.2f} -> {run['heldout_vae_psnr']:.2f} dB"
            if "heldout_vae_psnr" in run else "")
    print(f"decoder fine-tuned ({run['steps_done']} steps) into {args.out}{held}")
    return 0


def cmd_prior_train(args: argparse.Namespace) -> int:
    from ..diffusion.prior import train_prior

    folders, heldout = _prior_images(args)
    cfg = prior_config_from_args(args)
    bb = train_prior(folders, repo_path(args.out), cfg, device=args.device, heldout_sources=heldout or None)
    held = f", held-out vae psnr={bb.info['heldout_vae_psnr']:.2f} dB" if "heldout_vae_psnr" in bb.info else ""
    print(f"prior saved to {args.out}: scaling_factor={bb.scaling_factor:.4f}, "
          f"vae psnr={bb.info['final_vae_psnr']:.2f} dB{held}, flow loss={bb.info['final_flow_loss']:.4f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train

    overrides: dict = {}
    for o in args.set or []:
        for sec, kv in parse_override(o).items():
            overrides.setdefault(sec, {}).update(kv)
    cfg = load_config(repo_path(args.config), overrides=overrides)
    summary = train(cfg, args.data_root, args.exp, smoke_test=args.smoke_test, resume=args.resume,
                    device=args.device)
    best = summary["best_metric"]
    print(f"trained {summary['steps']} steps in {summary['seconds']} s; best {best['name']}={best['value']} "
          f"at step {best['step']}; outputs in {args.exp}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..restoration.reference import check_eq7
    from ..verify import print_table, register_check
    from .verify import run_checks

    register_check(check_eq7)
    results = run_checks()
    print_table(results)
    return 0 if all(r.passed for r in results) else 1


def register(sub) -> None:
    p = sub.add_parser("prior", help="the embedded backbone's prior")
    psub = p.add_subparsers(dest="prior_command", metavar="ACTION")
    t = psub.add_parser("train", help="pretrain the tiny VAE + flow transformer on the embedded clean images")
    t.add_argument("--scenes", nargs="+", default=["data/embedded/scenes/*"],
                   help="scene folders (globs allowed); their training views are used")
    t.add_argument("--out", default=str(EMBEDDED_DIR / "backbone"))
    t.add_argument("--config", default=None, help="YAML of PriorConfig fields (e.g. configs/prior_v3.yaml); "
                   "default: today's embedded prior")
    t.add_argument("--heldout", nargs="*", default=None,
                   help="held-out scene folders (all their views) for the held-out VAE PSNR; given (even empty), "
                        "the test views of --scenes count too")
    t.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    t.add_argument("--vae_steps", type=int, default=None, help="default: the config's (1200)")
    t.add_argument("--transformer_steps", type=int, default=None, help="default: the config's (2500)")
    t.add_argument("--resolution", type=int, default=None, help="default: the config's (64)")
    t.add_argument("--seed", type=int, default=None, help="default: the config's (0)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.set_defaults(func=cmd_prior_train)
    f = psub.add_parser("finetune-decoder", help="decoder-only VAE fine-tune of a prior (e.g. with the "
                        "adversarial term): the latent space, the flow prior and NiFi checkpoints stay valid")
    f.add_argument("--prior", default=str(EMBEDDED_DIR / "backbone"), help="the prior folder to start from")
    f.add_argument("--scenes", nargs="+", default=["data/embedded/scenes/*"],
                   help="scene folders (globs allowed); their training views are used")
    f.add_argument("--out", required=True, help="a new backbone folder (never the source)")
    f.add_argument("--config", default=None, help="YAML of PriorConfig fields (its vae_* settings are used)")
    f.add_argument("--heldout", nargs="*", default=None,
                   help="held-out scene folders (all their views) for the held-out VAE PSNR before and after; "
                        "given (even empty), the test views of --scenes count too")
    f.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    f.add_argument("--vae_steps", type=int, default=None)
    f.add_argument("--vae_lr", type=float, default=None, help="default: the config's (a fine-tune wants ~1e-4)")
    f.add_argument("--vae_gan_weight", type=float, default=None, help="the adversarial term's weight (0: off)")
    f.add_argument("--resolution", type=int, default=None)
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    f.set_defaults(func=cmd_prior_finetune_decoder)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])

    tr = sub.add_parser("train", help="train NiFi (phi- with Eq. 6, phi+ with Eq. 8)")
    tr.add_argument("--config", default="configs/default.yaml")
    tr.add_argument("--data_root", default="pairs/")
    tr.add_argument("--exp", default="runs/nifi_train")
    tr.add_argument("--smoke_test", action="store_true", help="a handful of steps on a tiny subset")
    tr.add_argument("--resume", action="store_true", help="continue from <exp>/latest.pt")
    tr.add_argument("--device", default=None)
    tr.add_argument("--set", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides")
    tr.set_defaults(func=cmd_train)

    v = sub.add_parser("verify", help="check each paper equation (2-8) against an independent computation")
    v.set_defaults(func=cmd_verify)
