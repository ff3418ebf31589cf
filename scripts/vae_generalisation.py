"""How well a backbone's VAE reconstructs worlds it never saw (issue 17; docs/embedded_assets.md).

    python scripts/vae_generalisation.py OUT.json BACKBONE [BACKBONE ...] [--pairs NAME=PAIRS_ROOT ...]

For each backbone: LPIPS-alex of the VAE round trip D(E(x)) (latent mean, ``experiments.latent_checks.
vae_reconstruction``) against the clean frame, (1) on the test pairs of each ``--pairs`` root (``<root>/<world>/
rate_<r>/test/{clean,degraded}``): the clean frame through the VAE, the compressed input as it is (``none``) and the
compressed input through the VAE, per rate (what any method that decodes through this VAE starts from), and the
round trip's high-frequency ratio and patch grid at periods 2, 4 and 8 on those clean views (``sharpness``), and
(2) on frames of fresh generated worlds (``scene_presets.generated_scene`` with seeds no preset uses: ``--fresh`` worlds of
8 views, rendered here, frames only).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from nifi_lib.diffusion.backbone import load_backbone
from nifi_lib.experiments.latent_checks import vae_reconstruction
from nifi_lib.gs import scene_presets as SP
from nifi_lib.io.atomic import atomic_write_json
from nifi_lib.io.images import load_image
from nifi_lib.metrics.metrics import lpips_loss_module
from nifi_lib.metrics.sharpness import high_frequency_ratio, patch_grid_artefact
from nifi_lib.synthesis.pairs import load_pair, read_pairs


def lpips_to(lp, images: torch.Tensor, clean: torch.Tensor) -> float:
    return float(lp(images * 2 - 1, clean * 2 - 1).mean())


def round_trip_sharpness(rec: torch.Tensor, clean: torch.Tensor, periods=(2, 4, 8)) -> dict:
    """What the VAE round trip keeps of the clean views' high frequencies (``metrics.sharpness``) and the periodic
    grid it adds: the ceiling of every method that decodes through this VAE (docs/embedded_assets.md, run 5)."""
    rec = rec.clamp(0, 1)
    return {"hf_ratio": float(high_frequency_ratio(rec, clean).mean()),
            "patch_grid": {str(k): {"vae(clean)": float(patch_grid_artefact(rec, k).mean()),
                                    "clean": float(patch_grid_artefact(clean, k).mean())} for k in periods}}


def fresh_frames(n_worlds: int, seed: int, folder: Path) -> torch.Tensor:
    """Frames of ``n_worlds`` generated worlds (8 views each, 128 px) from ``1000 * seed + i``."""
    fresh = SP.Preset("fresh", [], [f"fresh_{i}" for i in range(n_worlds)], n_views=8)
    SP.build_preset(fresh, folder, seed=seed, progress=False, frames_only=True)
    return torch.stack([load_image(p) for p in sorted(folder.glob("heldout/*/images/*.png"))])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("backbones", nargs="+")
    p.add_argument("--pairs", nargs="*", default=[], help="NAME=ROOT (a scene root: <root>/<world>/rate_<r>/test/)")
    p.add_argument("--fresh", type=int, default=4, help="fresh worlds (0: none)")
    p.add_argument("--seed", type=int, default=77, help="their preset seed (v3's worlds use seed 0)")
    args = p.parse_args()
    lp = lpips_loss_module("alex", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fresh = fresh_frames(args.fresh, args.seed, Path(tmp)) if args.fresh else None
    result = {"fresh": {"worlds": args.fresh, "seed": args.seed, "frames": 0 if fresh is None else len(fresh)},
              "backbones": {}}
    for name in args.backbones:
        bb, res = load_backbone(name), {}
        with torch.no_grad():
            for spec in args.pairs:
                label, root = spec.split("=", 1)
                res[label] = {}
                items = read_pairs(root, "test", layout="scene")
                for rate in sorted({it.rate for it in items}, key=float):
                    clean, deg = (torch.stack(t) for t in zip(*(load_pair(it) for it in items if it.rate == rate)))
                    rec = vae_reconstruction(bb, clean)[0]
                    res[label][rate] = {"pairs": len(clean), "vae(clean)": lpips_to(lp, rec, clean),
                                        "none": lpips_to(lp, deg, clean),
                                        "vae(degraded)": lpips_to(lp, vae_reconstruction(bb, deg)[0], clean)}
                    res[label].setdefault("sharpness", round_trip_sharpness(rec, clean))   # the same views per rate
            if fresh is not None:
                rec, psnr = vae_reconstruction(bb, fresh)
                res["fresh"] = {"vae(clean)": lpips_to(lp, rec, fresh), "psnr": psnr}
        result["backbones"][name] = res
        print(name, json.dumps(res, indent=1), flush=True)
    atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
