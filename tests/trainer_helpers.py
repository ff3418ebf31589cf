"""Tiny training set-ups shared by the trainer tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers import tiny_backbone
from nifi_lib.config import load_config


def make_pairs(root: Path, scenes=("s1", "s2"), rates=("0.1", "1.0"), n=3, size=32, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for sc in scenes:
        for r in rates:
            for split, k in (("train", n), ("test", 1)):
                for j in range(k):
                    clean = (rng.random((size, size, 3)) * 255).astype(np.uint8)
                    deg = np.clip(clean.astype(int) + rng.integers(-40, 40, clean.shape), 0, 255).astype(np.uint8)
                    for sub, arr in (("clean", clean), ("degraded", deg)):
                        d = root / sc / f"rate_{r}" / split / sub
                        d.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(arr).save(d / f"{j:03d}.png")
    return root


def make_backbone_dir(root: Path) -> Path:
    bb = tiny_backbone(seed=0)
    bb.save_pretrained(root, info={"note": "test"})
    return root


def tiny_config(backbone_dir: Path, **train):
    t = {"max_steps": 4, "batch_size": 2, "resolution": 32, "save_every": 1, "val_every": 2, "val_max_images": 2,
         "lr_phi_minus": 1e-3, "lr_phi_plus": 1e-3, "best_metric": "psnr"}
    t.update(train)
    return load_config("configs/embedded.yaml", overrides={
        "model": {"backbone": str(backbone_dir), "embeddings": str(backbone_dir / "prompt_embeds.npz"),
                  "lora_rank": 2, "lora_alpha": 2},
        "train": t, "loss_weights": {"lpips": 0.0}})
