"""``python -m bench.data_rss``: peak host memory of the training data loader vs the number of pairs.

Writes ``--pairs`` synthetic 960P (960x540) pairs once under ``--root`` (smooth random images, PNG), then, for
each count, runs the training loader (:class:`nifi_lib.training.data.BatchLoader`, batch 4, 512 crops) for
``--batches`` batches in a fresh process and prints its peak RSS (the process and its DataLoader workers,
``ru_maxrss`` of the process plus the largest worker's). Prints one line per count and a JSON summary.

    python -m bench.data_rss --root /tmp/rss_pairs --counts 100 1000 --workers 2 --cache_mb 256
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np


def write_pairs(root: Path, n: int, w: int = 960, h: int = 540) -> None:
    from nifi_lib.io.images import save_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    per_scene = 50
    for k in range(n):
        scene, view = f"s{k // per_scene:03d}", f"{k % per_scene:03d}"
        for kind in ("clean", "degraded"):
            f = root / scene / "rate_1.0" / "train" / kind / f"{view}.png"
            if f.is_file():
                continue
            f.parent.mkdir(parents=True, exist_ok=True)
            a, b, c = rng.uniform(0.002, 0.02, 3)
            img = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
            save_image(f, ((img * 0.5 + 0.5) * 255).astype(np.uint8))


def measure(root: Path, n: int, batches: int, workers: int, cache_mb: float) -> dict:
    """In this process: read the first ``n`` pairs and draw ``batches`` batches; peak RSS in MB."""
    import torch

    from nifi_lib.synthesis.pairs import read_pairs
    from nifi_lib.training.data import BatchLoader, PairSampler

    pairs = read_pairs(root, "train")[:n]
    loader = BatchLoader(PairSampler(pairs, resolution=512, cache_mb=cache_mb), 4, torch.Generator().manual_seed(0),
                         num_workers=workers)
    for _ in range(batches):
        loader.next()
    del loader
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"pairs": len(pairs), "batches": batches, "workers": workers, "cache_mb": cache_mb,
            "peak_rss_main_mb": round(own, 1), "peak_rss_worker_mb": round(kids, 1),
            "peak_rss_total_mb": round(own + workers * kids, 1),
            "float32_cache_everything_mb": round(len(pairs) * 2 * 3 * 960 * 540 * 4 / 2 ** 20, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache_mb", type=float, default=256.0)
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)   # internal: measure one count
    a = p.parse_args(argv)
    if a.one is not None:
        print(json.dumps(measure(a.root, a.one, a.batches, a.workers, a.cache_mb)))
        return 0
    write_pairs(a.root, max(a.counts))
    rows = []
    for n in a.counts:
        out = subprocess.run([sys.executable, "-m", "bench.data_rss", "--root", str(a.root), "--one", str(n),
                              "--batches", str(a.batches), "--workers", str(a.workers), "--cache_mb", str(a.cache_mb)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{r['pairs']:5d} pairs: peak RSS {r['peak_rss_total_mb']:.0f} MB (main {r['peak_rss_main_mb']:.0f}, "
              f"per worker {r['peak_rss_worker_mb']:.0f}); a float32 cache of every pair would hold "
              f"{r['float32_cache_everything_mb']:.0f} MB")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
