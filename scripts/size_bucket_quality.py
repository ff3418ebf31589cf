"""What ``Restorer(size_bucket=)`` costs a trained restorer (issue 18; docs/performance.md).

    python scripts/size_bucket_quality.py OUT.json --base_model DIR --ckpt best.pt --pairs ROOT [--crop 112x100]
        [--buckets 32 64] [--rate 0.5]

The GPU bench measures the bucket's first-call saving with random weights, where padding changes a random
network's output arbitrarily; the question for a user is whether a trained NiFi restores a frame as well when it is
padded. Each test pair of ``ROOT`` (``<root>/[<dataset>/]<world>/rate_<r>/test/``) at ``--rate`` is cropped to ``--crop`` (a
size that is not a multiple of the buckets) and restored as it is and with each bucket; LPIPS-alex and PSNR of each
restoration against the clean crop, and LPIPS between the bucketed and the plain restorations.
"""
from __future__ import annotations

import argparse
import json

import torch

from nifi_lib.io.atomic import atomic_write_json
from nifi_lib.metrics.metrics import lpips_loss_module, psnr
from nifi_lib.restoration.restorer import Restorer, check_size_bucket
from nifi_lib.synthesis.pairs import load_pair, read_pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--base_model", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--pairs", required=True)
    p.add_argument("--crop", default="112x100", help="HxW, from the top left of each frame")
    p.add_argument("--buckets", type=int, nargs="+", default=[32, 64])
    p.add_argument("--rate", default="0.5")
    args = p.parse_args()
    h, w = (int(v) for v in args.crop.split("x"))
    items = [it for it in read_pairs(args.pairs, "test", layout="auto") if it.rate == args.rate]
    clean, deg = (torch.stack(t)[..., :h, :w] for t in zip(*(load_pair(it) for it in items)))
    lp = lpips_loss_module("alex", device="cpu")
    r = Restorer.from_pretrained(args.base_model, ckpt=args.ckpt, device="cpu", dtype="fp32")
    seeds = list(range(len(deg)))

    def restore(bucket):
        r.size_bucket = check_size_bucket(r.backbone, bucket)    # the constructor's check for each bucket
        with torch.no_grad():
            return torch.cat([(r.restore(deg[i:i + 8] * 2 - 1, seed=seeds[i:i + 8]) + 1) / 2
                              for i in range(0, len(deg), 8)]).clamp(0, 1)

    def scores(x):
        return {"lpips": float(lp(x * 2 - 1, clean * 2 - 1).mean()), "psnr": float(psnr(x, clean).mean())}

    plain = restore(None)
    res = {"pairs": len(items), "rate": args.rate, "crop": args.crop, "base_model": args.base_model,
           "ckpt": args.ckpt, "none": scores(deg), "as_is": scores(plain), "buckets": {}}
    for b in args.buckets:
        out = restore(b)
        res["buckets"][str(b)] = {**scores(out), "lpips_vs_as_is": float(lp(out * 2 - 1, plain * 2 - 1).mean())}
    print(json.dumps(res, indent=1))
    atomic_write_json(args.out, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
