"""GPU benchmark of NiFi with SD3-medium-shaped random weights (``nifi bench`` / ``python -m bench.gpu_bench``).

Builds ``SD3Transformer2DModel`` and ``AutoencoderKL`` from the configs of
``stabilityai/stable-diffusion-3-medium-diffusers`` (random weights, bf16, on the device), a random prompt
embedding of shape (1, 333, 4096) / (1, 2048), the phi-/phi+ adapters at rank 64 (the project's
``add_restorer_adapters`` / ``add_critic_adapter``), and times the REAL code paths:

- ``train``: :meth:`NiFiTrainer.train_step` at batch 4, 512x512 (LPIPS-alex from
  :func:`nifi_lib.metrics.metrics.lpips_loss_module`), eager, then with the fast paths switched on
  one after another (channels_last + cuDNN autotuning, then torch.compile);
- ``restore``: :meth:`Restorer.restore` at 512, 1024 and 1920x1080, batch 1 and 4, eager and optimised
  (channels_last + cuDNN autotuning, phi- fused, torch.compile), with an encode/transformer/decode
  breakdown, the tiled decoder's memory, the SDPA backends and the chunked attention at the VAE attention's shape,
  and (``--vae-attention``) the optimised restore with diffusers' SDPA and the chunked VAE attention, A/B;
- ``stream`` (issue 18 throughput mode): frames per second of the real ``nifi restore`` loop
  (:func:`~nifi_lib.restoration.cli.restore_stream`: PNG decode -> restore -> PNG encode + atomic write) over a
  folder of 1920x1080 frames per ``--stream-modes`` entry (``--prefetch``, PNG encoding threads, PNG level), next
  to the model-only time of a pre-loaded batch.

Times: median of ``--iters`` iterations after ``--warmup`` (CUDA events, one synchronisation at the end
of each iteration; also the mean of the same number of back-to-back iterations), peak GPU memory
(``max_memory_allocated``), achieved TFLOP/s against :mod:`nifi_lib.bench.flops`, the ratio to the eager
path measured in the same run, and a ``torch.profiler`` table of the optimised paths. Results go to
``--out`` (JSON, profiler tables) and a markdown summary is printed last. ``--tiny``: the same code on
tiny models (a CPU smoke run of the whole script).
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from ..devices import default_device
from ..diffusion.fast_paths import load_compile_cache, save_compile_cache
from .flops import hooked_layer_macs, restore_flops, train_step_flops, transformer_layers, vae_decoder_layers, \
    vae_encoder_layers

# stabilityai/stable-diffusion-3-medium-diffusers: transformer/config.json and vae/config.json
SD3_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192)
SD3_MEDIUM_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=16, norm_num_groups=32, sample_size=1024, scaling_factor=1.5305,
    shift_factor=0.0609, force_upcast=True, use_quant_conv=False, use_post_quant_conv=False)
SD3_TEXT_TOKENS = 333
# --tiny: the same classes, factor-8 VAE, a few layers (CPU smoke run)
TINY_TRANSFORMER = dict(
    sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
    joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4, pos_embed_max_size=48)
TINY_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
    act_fn="silu", latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=1.5305,
    shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
TINY_TEXT_TOKENS = 8

RESTORE_SIZES = [(1024, 1024, 1), (512, 512, 1), (1080, 1920, 1), (512, 512, 4), (1024, 1024, 4), (1080, 1920, 4)]
TINY_RESTORE_SIZES = [(128, 128, 1), (64, 64, 1), (72, 128, 1), (64, 64, 2)]


class Budget:
    """Wall-clock deadline of the whole run: stages check it before starting."""

    def __init__(self, seconds: float):
        self.t0 = time.time()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.t0)

    def elapsed(self) -> float:
        return time.time() - self.t0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
def model_configs(tiny: bool) -> tuple[dict, dict, int]:
    return (TINY_TRANSFORMER, TINY_VAE, TINY_TEXT_TOKENS) if tiny else \
        (SD3_MEDIUM_TRANSFORMER, SD3_MEDIUM_VAE, SD3_TEXT_TOKENS)


def build_backbone(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A frozen :class:`Backbone` with SD3-medium-shaped (or tiny) random weights, built on ``device``."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    from ..diffusion.backbone import Backbone
    from ..diffusion.flow import make_scheduler
    from ..diffusion.prompts import PromptEmbeddings

    tcfg, vcfg, tokens = model_configs(tiny)
    torch.manual_seed(seed)
    with torch.device(device):
        vae = AutoencoderKL(**vcfg)
        transformer = SD3Transformer2DModel(**tcfg)
    vae.to(dtype=dtype)
    transformer.to(dtype=dtype)
    g = torch.Generator().manual_seed(seed + 1)
    prompt = PromptEmbeddings(torch.randn(1, tokens, tcfg["joint_attention_dim"], generator=g),
                              torch.randn(1, tcfg["pooled_projection_dim"], generator=g))
    null = PromptEmbeddings(torch.zeros_like(prompt.prompt_embeds), torch.zeros_like(prompt.pooled_prompt_embeds))
    bb = Backbone(vae=vae, transformer=transformer, scheduler=make_scheduler(1000, 3.0), prompt=prompt,
                  null_prompt=null, kind="sd3", source="<random SD3-medium-shaped>" if not tiny else "<random tiny>")
    return bb.freeze()


def randomize_adapter(model, adapter: str, scale: float = 0.01, seed: int = 0) -> None:
    """Non-zero LoRA B (peft initialises B to zero), so that the adapters do real work."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n and f".{adapter}." in n + ".":
                p.copy_((torch.randn(p.shape, generator=g) * scale).to(p.device, p.dtype))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------
def measure(fn, device: torch.device, warmup: int = 2, iters: int = 5, back_to_back: bool = True) -> dict:
    """Median (and min) time of ``fn`` over ``iters`` synchronised iterations after ``warmup``, the mean
    of ``iters`` back-to-back iterations, and the peak memory of the timed iterations."""
    t_first = time.time()
    for i in range(warmup):
        fn()
        if i == 0:
            sync(device)
            first = time.time() - t_first
    sync(device)
    if warmup == 0:
        first = float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, host = [], []
    for _ in range(iters):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t = time.perf_counter()
            s.record()
            fn()
            host.append((time.perf_counter() - t) * 1e3)     # host time to issue the work
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    b2b = float("nan")
    if back_to_back:
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        b2b = (time.perf_counter() - t) * 1e3 / iters
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"median_ms": statistics.median(times), "min_ms": min(times), "back_to_back_ms": b2b,
            "host_ms": statistics.median(host) if host else float("nan"),
            "peak_gib": peak, "first_call_s": first, "iters": iters, "times_ms": [round(x, 3) for x in times]}


def profile_table(fn, device: torch.device, path: Path | None, steps: int = 2, rows: int = 40) -> str:
    """``torch.profiler`` over ``steps`` calls of ``fn``: kernels and the ``nifi.*`` regions by device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    ka = prof.key_averages()
    tables = []
    for key in (("self_cuda_time_total", "self_device_time_total") if device.type == "cuda" else ("self_cpu_time_total",)):
        try:
            tables.append(ka.table(sort_by=key, row_limit=rows))
            break
        except Exception:  # noqa: BLE001 - name differs across torch versions
            continue
    # the nifi.* regions (phases of the step / of the restore), by total device time
    regions = [e for e in ka if e.key.startswith("nifi.")]
    lines = [f"{'region':40s} {'calls':>6s} {'device ms/call':>15s} {'cpu ms/call':>12s}"]
    for e in sorted(regions, key=lambda e: -_dev_total(e)):
        lines.append(f"{e.key:40s} {e.count // steps:6d} {_dev_total(e) / 1e3 / steps:15.2f} "
                     f"{e.cpu_time_total / 1e3 / steps:12.2f}")
    text = "\n".join(lines) + "\n\n" + (tables[0] if tables else "")
    if path is not None:
        path.write_text(text)
    return text


def _dev_total(evt) -> float:
    for name in ("device_time_total", "cuda_time_total"):
        v = getattr(evt, name, None)
        if v is not None:
            return float(v)
    return 0.0


def tflops(flop: float, ms: float) -> float:
    return flop / (ms * 1e-3) / 1e12 if ms and ms == ms and ms > 0 else float("nan")


# --------------------------------------------------------------------------------------------------
# Restoration
# --------------------------------------------------------------------------------------------------
def restore_breakdown(restorer, images: torch.Tensor, device: torch.device, warmup: int, iters: int) -> dict:
    """Encode / transformer / decode of one restore, each timed alone on the same inputs, through the one
    Eq. 7 path (:func:`~nifi_lib.restoration.restorer.encode_degraded`, ``restore_latents``, ``Restorer.decode``);
    "transformer" includes Eq. 2 and the one-step update (elementwise, negligible next to the transformer)."""
    from ..diffusion.fast_paths import mark_step
    from ..restoration.restorer import encode_degraded, restore_latents

    bb, sched = restorer.backbone, restorer.schedule()
    x = images.to(device=restorer.device, dtype=restorer.dtype)
    g = torch.Generator(device=restorer.device).manual_seed(0)

    def enc():
        mark_step(bb)
        with torch.no_grad():
            return encode_degraded(bb, x, restorer.adapter, g).clone()

    lat = enc()

    def tr():
        mark_step(bb)
        with torch.no_grad():
            return restore_latents(bb, lat, sched, restorer.adapter, g).x_hat.clone()

    x_hat = tr()

    def dec():
        mark_step(bb)
        with torch.no_grad():
            return restorer.decode(x_hat).clone()

    return {name: measure(f, device, warmup=warmup, iters=iters, back_to_back=False)["median_ms"]
            for name, f in (("encode", enc), ("transformer", tr), ("decode", dec))}


def _set_vae_layout(bb, channels_last: bool) -> None:
    from ..diffusion.fast_paths import set_channels_last_group_norm

    bb.vae.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    set_channels_last_group_norm(bb.vae, channels_last)


def sdpa_backends(device: torch.device, shapes: list[tuple[int, int, int, int]], dtype=torch.bfloat16) -> list[dict]:
    """Time each SDPA backend at the given (B, heads, seq, head_dim) shapes (the VAE's mid-block attention
    has one 512-wide head over every latent pixel), and :func:`~nifi_lib.diffusion.vae_attention.chunked_attention`
    (``chunked``, eager; ``chunked_max_abs_diff``: its largest difference from the default SDPA's output)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..diffusion.vae_attention import chunked_attention

    out = []
    for shape in shapes:
        q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
        row = {"shape": list(shape)}
        for be in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH", None):
            name = be or "default"
            try:
                ctx = sdpa_kernel([getattr(SDPBackend, be)]) if be else None

                def f():
                    if ctx is None:
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    with sdpa_kernel([getattr(SDPBackend, be)]):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
                row[name] = round(measure(f, device, warmup=1, iters=5, back_to_back=False)["median_ms"], 3)
            except Exception as e:  # noqa: BLE001 - a backend that does not support the shape
                row[name] = f"n/a ({type(e).__name__})"
        try:
            with torch.no_grad():
                ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                row["chunked_max_abs_diff"] = float((chunked_attention(q, k, v).float() - ref.float()).abs().max())
            del ref
            row["chunked"] = round(measure(functools.partial(chunked_attention, q, k, v), device, warmup=1, iters=5,
                                           back_to_back=False)["median_ms"], 3)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory
            row["chunked"] = f"n/a ({type(e).__name__})"
        out.append(row)
        del q, k, v
    return out


def fp8_restore(restorer, images: torch.Tensor, device: torch.device, warmup: int, iters: int,
                ref_out: torch.Tensor | None = None, photos: torch.Tensor | None = None,
                ref_photos: torch.Tensor | None = None) -> dict:
    """The FP8 lever (:mod:`~nifi_lib.diffusion.fp8`): ``restorer``'s backbone converted in place
    (:func:`~nifi_lib.restoration.restorer.enable_fp8`; irreversible), then the restore of ``images`` timed, its
    relative L2 distance from the eager ``ref_out`` and :func:`photo_agreement` with the eager ``ref_photos``."""
    from ..restoration.restorer import enable_fp8

    bb = restorer.backbone
    if not bb.fast_paths.get("fp8"):
        bb.fast_paths["fp8"] = enable_fp8(bb)
    with torch.no_grad():
        out = {"layers": bb.fast_paths["fp8"], **measure(lambda: restorer.restore(images, seed=0), device,
                                                         warmup=warmup, iters=iters)}
        if ref_out is not None:
            o = restorer.restore(images, seed=0).float()
            out["vs_eager_rel_err"] = float((o - ref_out.float()).norm() / ref_out.float().norm())
        if ref_photos is not None:
            got = torch.cat([restorer.restore(x[None], seed=0) for x in photos])
            out["vs_eager_photos"] = photo_agreement(ref_photos, got)
    return out


def bucket_neighbour(size: tuple[int, int, int], bucket: int) -> tuple[int, int, int]:
    """A frame size never restored before that falls in the same ``bucket`` as ``size`` (a multiple of it): 40
    rows and 56 columns fewer (or the smallest size of the bucket when ``size`` is smaller than that)."""
    h, w, b = size
    if h % bucket or w % bucket:
        raise ValueError(f"--size-bucket {bucket}: the target frame {h}x{w} is not a multiple of it")
    return max(h - 40, h - bucket + 1), max(w - 56, w - bucket + 1), b


def size_bucket_ab(restorer, target: tuple[int, int, int], bucket: int, device: torch.device, iters: int,
                   photo_check: bool = False) -> dict:
    """Issue 18's first call of a new frame size, with and without ``Restorer(size_bucket=)``: ``restorer`` (the
    optimised one, already compiled at ``target``, a multiple of ``bucket``) restores a size it has not seen
    (:func:`bucket_neighbour`) first as it is (a new shape: compiles, or loads from the inductor cache) and then
    bucketed (padded to ``target``: the compiled graph); the first call and the median of each, and, with
    ``photo_check``, :func:`photo_agreement` between the two restorations of :data:`REAL_PHOTOS` at that size (what
    the padding changes)."""
    new = bucket_neighbour(target, bucket)
    x = (torch.rand(new[2], 3, new[0], new[1], generator=torch.Generator().manual_seed(5)) * 2 - 1).to(device)
    out = {"bucket": bucket, "target": f"{target[0]}x{target[1]}", "new_size": f"{new[0]}x{new[1]}"}
    keep = restorer.size_bucket
    try:
        for name, b in (("as_is", None), ("bucketed", bucket)):
            restorer.size_bucket = b
            with torch.no_grad():
                out[name] = measure(lambda: restorer.restore(x, seed=0), device, warmup=3, iters=iters)
        if photo_check:
            photos = real_photos(new[0], new[1], device)
            rest = {}
            for name, b in (("as_is", None), ("bucketed", bucket)):
                restorer.size_bucket = b
                with torch.no_grad():
                    rest[name] = torch.cat([restorer.restore(p[None], seed=0) for p in photos])
            out["bucketed_vs_as_is_photos"] = photo_agreement(rest["as_is"], rest["bucketed"])
    finally:
        restorer.size_bucket = keep
    return out


def vae_attention_kinds(args, device: torch.device) -> list[str]:
    """``--vae-attention``: the VAE attention kinds to time, the first being the one the restore rows use
    (default: both on CUDA, sdpa elsewhere)."""
    choice = args.vae_attention or ("both" if device.type == "cuda" else "sdpa")
    return ["sdpa", "chunked"] if choice == "both" else [choice]


def vae_attention_ab(restorer, images: torch.Tensor, kinds: list[str], device: torch.device, warmup: int,
                     iters: int, photos: torch.Tensor | None = None, ref_photos: torch.Tensor | None = None) -> dict:
    """The same restore (restorer, frames, seed) with each VAE attention kind in turn
    (:func:`~nifi_lib.diffusion.fast_paths.optimize_backbone`'s ``vae_attention``): each kind's times, and the
    largest absolute difference of its restored frames from the first kind's; with ``photos`` and their eager
    restorations ``ref_photos``, each kind's :func:`photo_agreement` with them (issue 18's quality check, per
    kind: ``vs_eager_photos``). Leaves the first kind set."""
    from ..diffusion.fast_paths import optimize_backbone

    bb, out, ref = restorer.backbone, {}, None
    for kind in kinds:
        optimize_backbone(bb, vae_attention=kind)
        with torch.no_grad():
            m = measure(lambda: restorer.restore(images, seed=0), device, warmup=warmup, iters=iters)
            img = restorer.restore(images, seed=0).float().clone()
            restored = (torch.cat([restorer.restore(x[None], seed=0) for x in photos])
                        if photos is not None and ref_photos is not None else None)
        ref = img if ref is None else ref
        out[kind] = {"median_ms": m["median_ms"], "min_ms": m["min_ms"], "peak_gib": m["peak_gib"],
                     "first_call_s": m["first_call_s"], f"max_abs_diff_vs_{kinds[0]}": float((img - ref).abs().max())}
        if restored is not None:
            out[kind]["vs_eager_photos"] = photo_agreement(ref_photos, restored)
    optimize_backbone(bb, vae_attention=kinds[0])
    if len(kinds) > 1:
        out["speedup"] = out[kinds[0]]["median_ms"] / out[kinds[1]]["median_ms"]
    return out


def bench_restore(args, device: torch.device, budget: Budget, results: dict, out: Path | None) -> None:
    from ..diffusion.fast_paths import optimize_backbone
    from ..restoration.lora import RESTORER, add_restorer_adapters
    from ..restoration.fast_paths import fuse_adapter
    from ..restoration.restorer import Restorer

    tcfg, vcfg, tokens = model_configs(args.tiny)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = TINY_RESTORE_SIZES if args.tiny else RESTORE_SIZES
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    res = results.setdefault("restore", {"rows": {}, "ablation_1024": {}, "notes": []})
    kinds = vae_attention_kinds(args, device)     # the optimised rows run kinds[0]; with two, an A/B per size
    vres = res.setdefault("vae_attention", {"kinds": kinds, "rows": {}})
    log("restore: building the backbone")
    bb = build_backbone(args.tiny, device, dtype)
    add_restorer_adapters(bb, rank=args.rank)
    randomize_adapter(bb.transformer, RESTORER, seed=1)
    randomize_adapter(bb.vae, RESTORER, seed=2)
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {s: (torch.rand(s[2], 3, s[0], s[1], generator=gen) * 2 - 1).to(device) for s in sizes}
    target = sizes[0]
    key = lambda s: f"{s[0]}x{s[1]}_b{s[2]}"  # noqa: E731

    def its(s):
        big = s[0] * s[1] * s[2] > 1024 * 1024 * 2
        return (1, 3) if big else (args.warmup, args.iters)

    def attention_ab(r, images: torch.Tensor, s, variant: str, w: int, n: int, **photo_kw) -> None:
        """--vae-attention both: the restore of ``images`` (size s) with each VAE attention kind (vae_attention_ab)."""
        if len(kinds) < 2:
            return
        if budget.left() < args.reserve + (60 if device.type == "cuda" else 0):
            res["notes"].append(f"VAE attention A/B {key(s)} skipped (time budget)")
            return
        try:
            vres["rows"][key(s)] = {"variant": variant, **vae_attention_ab(r, images, kinds, device, w, n, **photo_kw)}
            log(f"restore {variant} {key(s)}, VAE attention: {vres['rows'][key(s)]}")
        except Exception as e:  # noqa: BLE001
            vres["rows"][key(s)] = {"variant": variant, "error": repr(e)}
            log(f"restore {variant} {key(s)} VAE attention A/B FAILED: {e!r}")
            traceback.print_exc()

    # FLOP count checked against forward hooks on the real model (eager, once)
    try:
        if not args.flop_check:
            raise RuntimeError("skipped (--no-flop-check)")
        small = sizes[1] if len(sizes) > 1 else sizes[0]
        r0 = Restorer(bb)
        with torch.no_grad():
            hooked = hooked_layer_macs(bb.transformer, lambda: r0.restore(inputs[small], seed=0))
            hooked_v = hooked_layer_macs(bb.vae, lambda: r0.restore(inputs[small], seed=0))
        f = bb.vae_scale_factor
        lh, lw = -(-small[0] // f), -(-small[1] // f)
        th, tw = -(-lh // 2) * 2, -(-lw // 2) * 2
        analytic = sum(l.macs for l in transformer_layers(tcfg, small[2], th, tw, tokens)) + \
            sum(l.macs for l in vae_encoder_layers(vcfg, small[2], lh * f, lw * f)) + \
            sum(l.macs for l in vae_decoder_layers(vcfg, small[2], th, tw))
        base = sum(v for k, v in {**hooked, **hooked_v}.items() if "lora_" not in k)
        res["flop_check"] = {"size": key(small), "analytic_base_macs": analytic, "hooked_base_macs": base,
                             "match": analytic == base}
        log(f"restore: FLOP count vs hooks at {key(small)}: analytic {analytic:.4e} hooked {base:.4e}")
    except Exception as e:  # noqa: BLE001
        res["flop_check"] = {"error": repr(e)}

    # ---- eager (all switches off) ----
    restorer = Restorer(bb)
    ref_out = ref_photos = None
    eager_sizes = sizes if not args.eager_sizes else \
        [tuple(int(v) for v in x.split("x")) for x in args.eager_sizes.split(",")]
    for s in eager_sizes:
        if s not in inputs:
            inputs[s] = (torch.rand(s[2], 3, s[0], s[1], generator=gen) * 2 - 1).to(device)
        if budget.left() < args.reserve:
            res["notes"].append(f"eager {key(s)} skipped (time budget)")
            continue
        w, n = its(s)
        try:
            with torch.no_grad():
                m = measure(lambda: restorer.restore(inputs[s], seed=0), device, warmup=w, iters=n)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: keep going
            res["rows"].setdefault(key(s), {})["eager"] = {"error": repr(e)}
            log(f"restore eager {key(s)} FAILED: {e!r}")
            free(device)
            continue
        fl = restore_flops(tcfg, vcfg, s[2], s[0], s[1], tokens, args.rank)["total"]
        m["tflops"] = tflops(fl, m["median_ms"])
        res["rows"].setdefault(key(s), {})["eager"] = m
        log(f"restore eager {key(s)}: {m['median_ms']:.1f} ms (host {m['host_ms']:.1f}), {m['peak_gib']:.2f} GiB, "
            f"{m['tflops']:.0f} TFLOP/s")
        if s == target:
            with torch.no_grad():
                ref_out = restorer.restore(inputs[s], seed=0)
                if args.photo_check:   # issue 18's quality check: real photos, eager vs optimised (below)
                    photos = real_photos(s[0], s[1], device)
                    ref_photos = torch.cat([restorer.restore(x[None], seed=0) for x in photos])
        free(device)
    try:
        res["breakdown_eager"] = restore_breakdown(restorer, inputs[target], device, args.warmup, args.iters)
        log(f"restore eager breakdown {key(target)}: {res['breakdown_eager']}")
    except Exception as e:  # noqa: BLE001
        res["breakdown_eager"] = {"error": repr(e)}

    # ---- ablation at the target size: the switches one after another ----
    abl = res["ablation_1024"]
    abl["eager"] = res["rows"].get(key(target), {}).get("eager", {}).get("median_ms")
    if device.type == "cuda" and args.ablation:
        optimize_backbone(bb, channels_last=True, cudnn_benchmark=True)
        with torch.no_grad():
            m = measure(lambda: restorer.restore(inputs[target], seed=0), device, warmup=args.warmup, iters=args.iters)
        abl["+channels_last+cudnn_benchmark"] = m["median_ms"]
        log(f"restore {key(target)} +channels_last+cudnn.benchmark: {m['median_ms']:.1f} ms")
    fuse_adapter(bb, RESTORER)
    if args.ablation:
        with torch.no_grad():
            m = measure(lambda: restorer.restore(inputs[target], seed=0), device, warmup=args.warmup, iters=args.iters)
        abl["+fuse_lora"] = m["median_ms"]
        log(f"restore {key(target)} +fuse_lora: {m['median_ms']:.1f} ms")
    if args.no_compile:   # the VAE attention A/B on the fastest eager restorer instead
        variant = "eager" + ("+channels_last" if bb.fast_paths.get("channels_last") else "") + "+fuse_lora"
        for s in eager_sizes:
            attention_ab(restorer, inputs[s], s, variant, *its(s),
                         **({"photos": photos, "ref_photos": ref_photos} if s == target and ref_photos is not None
                            else {}))
    if out is not None:
        (out / "bench.json").write_text(json.dumps(results, indent=1, default=str))

    # ---- optimised: + torch.compile ----
    if not args.no_compile:
        fast = Restorer(bb, compile=True, fuse_lora=True, vae_attention=kinds[0])
        opt_sizes = sizes if not args.opt_sizes else \
            [tuple(int(v) for v in x.split("x")) for x in args.opt_sizes.split(",")]
        for i, s in enumerate(opt_sizes):
            if s not in inputs:
                inputs[s] = (torch.rand(s[2], 3, s[0], s[1], generator=gen) * 2 - 1).to(device)
            if budget.left() < args.reserve + (60 if i else 0):
                res["notes"].append(f"optimised {key(s)} skipped (time budget)")
                continue
            w, n = its(s)
            w = max(w, 3)    # the first call compiles (recompiles for a new shape); CUDA graphs record on the 2nd
            try:
                with torch.no_grad():
                    m = measure(lambda: fast.restore(inputs[s], seed=0), device, warmup=w, iters=n)
            except Exception as e:  # noqa: BLE001
                res["rows"].setdefault(key(s), {})["optimised"] = {"error": repr(e)}
                log(f"restore optimised {key(s)} FAILED: {e!r}")
                traceback.print_exc()
                if i == 0 and bb.fast_paths.get("cuda_graphs"):
                    # fall back to compile without CUDA graphs, and say so
                    res["notes"].append(f"CUDA graphs failed ({e!r}); optimised rows are without them")
                    torch._dynamo.reset()
                    for k in ("compile_transformer", "compile_vae", "cuda_graphs"):
                        bb.fast_paths.pop(k, None)
                    fast = Restorer(bb, compile=True, fuse_lora=True, cuda_graphs=False, vae_attention=kinds[0])
                    try:
                        with torch.no_grad():
                            m = measure(lambda: fast.restore(inputs[s], seed=0), device, warmup=w, iters=n)
                    except Exception as e2:  # noqa: BLE001
                        log(f"restore optimised {key(s)} without CUDA graphs FAILED too: {e2!r}")
                        continue
                else:
                    continue
            fl = restore_flops(tcfg, vcfg, s[2], s[0], s[1], tokens, args.rank, fused=True)["total"]
            m["tflops"] = tflops(fl, m["median_ms"])
            row = res["rows"].setdefault(key(s), {})
            row["optimised"] = m
            if "eager" in row:
                row["speedup"] = row["eager"]["median_ms"] / m["median_ms"]
            log(f"restore optimised {key(s)}: {m['median_ms']:.1f} ms (host {m['host_ms']:.1f} ms, first call "
                f"{m['first_call_s']:.1f} s), "
                f"{m['peak_gib']:.2f} GiB, {m['tflops']:.0f} TFLOP/s")
            if s == target:
                abl["+compile (optimised)"] = m["median_ms"]
                with torch.no_grad():
                    o = fast.restore(inputs[s], seed=0)
                if ref_out is not None:
                    rel = (o.float() - ref_out.float()).norm() / ref_out.float().norm()
                    res["optimised_vs_eager_rel_err"] = float(rel)
                    log(f"restore optimised vs eager output at {key(s)}: rel. L2 error {float(rel):.2e}")
                if ref_photos is not None:
                    with torch.no_grad():
                        opt_photos = torch.cat([fast.restore(x[None], seed=0) for x in photos])
                    res["optimised_vs_eager_photos"] = photo_agreement(ref_photos, opt_photos)
                    log(f"restore optimised vs eager on real photos at {key(s)}: "
                        f"{res['optimised_vs_eager_photos']}")
                try:
                    res["breakdown_optimised"] = restore_breakdown(fast, inputs[s], device, 3, args.iters)
                    log(f"restore optimised breakdown {key(s)}: {res['breakdown_optimised']}")
                except Exception as e:  # noqa: BLE001
                    res["breakdown_optimised"] = {"error": repr(e)}
                if args.profile and budget.left() > args.reserve:
                    with torch.no_grad():
                        txt = profile_table(lambda: fast.restore(inputs[s], seed=0), device,
                                            out / "profile_restore.txt" if out else None, steps=3)
                    print("\n==== profiler: optimised restore " + key(s) + " ====\n" + txt[:3000], flush=True)
                if args.nchw_variant and device.type == "cuda" and budget.left() > args.reserve + 60:
                    # the same, with the VAE in NCHW and PyTorch's GroupNorm (no channels_last)
                    try:
                        _set_vae_layout(bb, channels_last=False)
                        with torch.no_grad():
                            m2 = measure(lambda: fast.restore(inputs[s], seed=0), device, warmup=3, iters=n)
                        m2["tflops"] = tflops(fl, m2["median_ms"])
                        row["optimised_nchw_vae"] = m2
                        abl["compile with NCHW VAE (native GroupNorm)"] = m2["median_ms"]
                        log(f"restore optimised, NCHW VAE {key(s)}: {m2['median_ms']:.1f} ms (host {m2['host_ms']:.1f}, "
                            f"first call {m2['first_call_s']:.1f} s)")
                        res["breakdown_optimised_nchw"] = restore_breakdown(fast, inputs[s], device, 2, args.iters)
                        log(f"restore optimised NCHW breakdown {key(s)}: {res['breakdown_optimised_nchw']}")
                    except Exception as e:  # noqa: BLE001
                        res["notes"].append(f"NCHW variant failed: {e!r}")
                        traceback.print_exc()
                    finally:
                        _set_vae_layout(bb, channels_last=True)
            attention_ab(fast, inputs[s], s, "optimised", w, n,
                         **({"photos": photos, "ref_photos": ref_photos} if s == target and ref_photos is not None
                            else {}))
            if out is not None:
                (out / "bench.json").write_text(json.dumps(results, indent=1, default=str))
            free(device)
        def lever_row(name: str, label: str, fn) -> None:
            """One optional lever's row: ``res[name] = fn()``; an error is recorded (and printed), not raised."""
            try:
                res[name] = fn()
                log(f"restore {label}: {res[name]}")
            except Exception as e:  # noqa: BLE001
                res[name] = {"error": repr(e)}
                log(f"restore {label} FAILED: {e!r}")
                traceback.print_exc()
            free(device)

        if args.size_bucket and budget.left() > args.reserve + (90 if device.type == "cuda" else 0):
            lever_row("size_bucket", f"size bucket {args.size_bucket}", lambda: size_bucket_ab(
                fast, target, args.size_bucket, device, args.iters, photo_check=args.photo_check))
        if args.fp8 and budget.left() > args.reserve + (120 if device.type == "cuda" else 0):
            # last: the conversion is irreversible for this backbone (the transformer recompiles)
            lever_row("fp8", f"fp8 {key(target)}", lambda: fp8_restore(
                fast, inputs[target], device, max(args.warmup, 3), args.iters, ref_out=ref_out,
                photos=photos if ref_photos is not None else None, ref_photos=ref_photos))
        # tiled decoding bounds the decoder's memory on large frames
        big = sizes[-1]
        if args.tiled and budget.left() > args.reserve + 30:
            try:
                tiled = Restorer(bb, vae_tile=64 if not args.tiny else 4, vae_tile_overlap=16 if not args.tiny else 1)
                with torch.no_grad():
                    m = measure(lambda: tiled.restore(inputs[big], seed=0), device, warmup=2, iters=3, back_to_back=False)
                res["rows"].setdefault(key(big), {})["optimised_vae_tile64"] = m
                log(f"restore optimised + vae_tile=64 {key(big)}: {m['median_ms']:.1f} ms, {m['peak_gib']:.2f} GiB")
            except Exception as e:  # noqa: BLE001
                res["notes"].append(f"tiled decode failed: {e!r}")
    # SDPA backends (and the chunked attention) at the VAE attention's shapes (1024^2, 512^2 x 4 and 1080x1920
    # frames) and SD3's
    if device.type == "cuda" and args.sdpa and budget.left() > args.reserve:
        try:
            res["sdpa"] = sdpa_backends(device, [(1, 1, 16384, 512), (4, 1, 4096, 512), (1, 1, 32400, 512),
                                                 (8, 24, 1357, 64)])
            log(f"SDPA backends: {res['sdpa']}")
        except Exception as e:  # noqa: BLE001
            res["sdpa"] = repr(e)
    del restorer, bb, inputs
    free(device)


# --------------------------------------------------------------------------------------------------
# Training step
# --------------------------------------------------------------------------------------------------
def bench_train(args, device: torch.device, budget: Budget, results: dict, out: Path | None) -> None:
    from ..config import Config
    from ..metrics.metrics import lpips_loss_module
    from ..training.trainer import NiFiTrainer, info_to_python
    from .train_agreement import Recorded, check_steps, loss_check, params_checksum

    tcfg, vcfg, tokens = model_configs(args.tiny)
    res = results.setdefault("train", {"variants": {}, "notes": []})
    cfg = Config()
    batch, resolution = (2, 64) if args.tiny else (4, 512)
    cfg.train.batch_size, cfg.train.resolution = batch, resolution
    cfg.model.lora_rank = cfg.model.lora_alpha = args.rank
    cfg.train.mixed_precision = "bf16"
    cfg.train.gradient_checkpointing = bool(args.grad_ckpt)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    log("train: building the backbone and LPIPS")
    bb = build_backbone(args.tiny, device, dtype)
    perceptual = lpips_loss_module("alex", device=device)
    trainer = NiFiTrainer(cfg, bb, device=str(device), perceptual=perceptual, perceptual_name="lpips-alex",
                          compile=False)
    gen = torch.Generator(device="cpu").manual_seed(0)
    clean = torch.rand(batch, 3, resolution, resolution, generator=gen).to(device)
    deg = (clean + 0.1 * torch.randn(clean.shape, generator=gen).to(device)).clamp(0, 1)
    flop = train_step_flops(tcfg, vcfg, batch, resolution, tokens, args.rank, alpha=cfg.loss_weights.alpha)
    res["flops"] = flop
    infos = []
    n_check = check_steps(args.loss_check, device)
    fresh = {}   # --loss-check: mode -> (variant, its first index in infos, params_checksum before its step 1)

    def step():
        infos.append(trainer.train_step(clean, deg))

    def run(name: str, warmup: int):
        if budget.left() < args.reserve:
            res["notes"].append(f"{name} skipped (time budget)")
            log(f"train {name} skipped (time budget)")
            return None
        n0 = len(infos)
        try:
            m = measure(step, device, warmup=warmup, iters=args.iters)
        except Exception as e:  # noqa: BLE001
            res["variants"][name] = {"error": repr(e)}
            log(f"train {name} FAILED: {e!r}")
            traceback.print_exc()
            return None
        m["tflops"] = tflops(flop["total"], m["median_ms"])
        rows = info_to_python(infos[-3:])
        m["skipped_last3"] = [r["skipped"] for r in rows]
        m["loss_total_last"] = rows[-1]["loss_total"] if rows else None
        m["steps_run"] = len(infos) - n0   # the loss above is after this many steps of this variant's trainer
        res["variants"][name] = m
        eager = res["variants"].get("eager", {}).get("median_ms")
        if eager:
            m["speedup"] = eager / m["median_ms"]
        log(f"train {name}: {m['median_ms']:.0f} ms/step (b2b {m['back_to_back_ms']:.0f}, host {m['host_ms']:.0f}), "
            f"{m['peak_gib']:.2f} GiB, {m['tflops']:.0f} TFLOP/s, first call {m['first_call_s']:.1f} s, "
            f"skipped {m['skipped_last3']}")
        if out is not None:
            (out / "bench.json").write_text(json.dumps(results, indent=1, default=str))
        return m

    variants = args.train_variants.split(",")
    if "eager" in variants:
        if n_check:
            fresh["eager"] = ("eager", len(infos), params_checksum(trainer))
        run("eager", max(args.warmup, 3))
    if device.type == "cuda" and "channels_last" in variants:
        trainer.enable_fast_paths(compile=False, channels_last=True)
        run("+channels_last+cudnn_benchmark", max(args.warmup, 3))
    if not args.no_compile and "compile" in variants:
        trainer.enable_fast_paths(compile=True)
        m = run("+compile (optimised)", max(args.warmup, 3))
        if m is not None and args.profile and budget.left() > args.reserve:
            txt = profile_table(step, device, out / "profile_train.txt" if out else None, steps=2)
            print("\n==== profiler: optimised train step ====\n" + txt[:8000], flush=True)
    def fresh_cuda_graph_trainer(what: str = "", **paths) -> None:
        """A fresh backbone and trainer (the previous ones freed) with compile + CUDA graphs and ``paths``."""
        nonlocal trainer, bb
        trainer = bb = None
        free(device)
        log(f"train: fresh backbone for the CUDA-graph variant{what}")
        bb = build_backbone(args.tiny, device, dtype)
        trainer = NiFiTrainer(cfg, bb, device=str(device), perceptual=perceptual, perceptual_name="lpips-alex",
                              compile=False)
        trainer.enable_fast_paths(compile=True, cuda_graphs=True, **paths)

    if not args.no_compile and "compile_cudagraphs_chunked" in variants and device.type == "cuda":
        # the VAE attention lever (diffusion/vae_attention.py) in the training step, before the plain CUDA-graph
        # variant (whose trainer the loss check may continue)
        fresh_cuda_graph_trainer(" with the chunked VAE attention", vae_attention="chunked")
        run("+compile+cuda_graphs+chunked_vae_attention", max(args.warmup, 3))
    if not args.no_compile and "compile_cudagraphs" in variants and device.type == "cuda":
        fresh_cuda_graph_trainer()
        if n_check:
            fresh["optimised"] = ("+compile+cuda_graphs", len(infos), params_checksum(trainer))
        run("+compile+cuda_graphs", max(args.warmup, 3))
    # issue 18's loss check (nifi_lib.bench.train_agreement): the eager and CUDA-graph variants stepped fresh
    # trainers, so their own steps are the first steps of its curves (the CUDA-graph trainer, still alive, may go on)
    recorded = {mode: Recorded(info_to_python(infos[n0:n0 + res["variants"][name]["steps_run"]]), start,
                               f"bench variant {name!r}", trainer if mode == "optimised" else None)
                for mode, (name, n0, start) in fresh.items() if "steps_run" in res["variants"].get(name, {})}
    del trainer, bb
    free(device)
    if n_check:
        log(f"train: loss check over {n_check} steps (reusing {sorted(recorded) or 'no'} variant curves)")
        res["loss_agreement"] = loss_check(
            n_check, clean, deg, cfg, functools.partial(build_backbone, args.tiny, device, dtype), device,
            perceptual, "lpips-alex", compile=not args.no_compile,
            fp32_checkpointing=device.type == "cuda" and not args.tiny, recorded=recorded, time_left=lambda: budget.left() - args.reserve,
            compile_estimate_s=300.0 if device.type == "cuda" and not args.tiny else 30.0)
        log(f"train: loss check: {res['loss_agreement']['verdict']}")
    del recorded, perceptual
    free(device)


# --------------------------------------------------------------------------------------------------
# Restore loop over a folder of frames (issue 18 throughput mode)
# --------------------------------------------------------------------------------------------------
STREAM_PHOTO = "coffee"     # skimage.data: a natural 400x600 photo (3:2, close to a 16:9 frame)


def parse_hw(text: str) -> tuple[int, int]:
    """``"1080x1920"`` -> ``(1080, 1920)`` (height, width)."""
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def stream_settings(args) -> tuple[tuple[int, int], int, int, list[tuple[int, int, int | None]]]:
    """``((H, W), frames, batch, modes)`` of the ``stream`` part: the flags, else the defaults of a 1080p GPU run
    (``--tiny``: a small CPU smoke run). A mode is ``(prefetch, writers, png_level)`` from ``--stream-modes``
    entries ``P[:W[:L]]`` (writers default 1, level default None: Pillow's 6)."""
    size = parse_hw(args.stream_size or ("64x96" if args.tiny else "1080x1920"))
    frames = args.stream_frames or (8 if args.tiny else 48)
    batch = args.stream_batch or (2 if args.tiny else 4)
    modes = []
    for entry in args.stream_modes.split(","):
        v = entry.split(":")
        if not 1 <= len(v) <= 3 or not all(x.strip().isdigit() for x in v):
            raise ValueError(f"--stream-modes entry {entry!r}: expected PREFETCH[:WRITERS[:PNG_LEVEL]], e.g. 2:4:1")
        modes.append((int(v[0]), int(v[1]) if len(v) > 1 else 1, int(v[2]) if len(v) > 2 else None))
    return size, frames, batch, modes


def mode_name(mode: tuple[int, int, int | None]) -> str:
    """``(2, 4, 1)`` -> ``"p2_w4_l1"`` (the row's key in bench.json)."""
    p, w, lvl = mode
    return f"p{p}_w{w}" + ("" if lvl is None else f"_l{lvl}")


def photo_canvas(h: int, w: int, photo: str = STREAM_PHOTO) -> torch.Tensor:
    """A scikit-image sample photo resized (bilinear, antialiased) to cover ``h x w`` and centre-cropped:
    ``(3, h, w)`` in [0, 1]."""
    import numpy as np
    import skimage.data
    import torch.nn.functional as F

    from ..io.images import to_tensor

    img = to_tensor(np.ascontiguousarray(np.asarray(getattr(skimage.data, photo)())[..., :3]))
    s = max(h / img.shape[1], w / img.shape[2])
    rh, rw = max(h, round(img.shape[1] * s)), max(w, round(img.shape[2] * s))
    big = F.interpolate(img[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (rh - h) // 2, (rw - w) // 2
    return big[:, top:top + h, left:left + w].clamp(0, 1)


REAL_PHOTOS = ("astronaut", "chelsea", "coffee")   # natural photos inside the scikit-image wheel (no download)
PHOTO_LPIPS_TOLERANCE = 0.005                        # issue 18: optimised vs eager restored frames, LPIPS


def real_photos(h: int, w: int, device: torch.device, names=REAL_PHOTOS) -> torch.Tensor:
    """``(N, 3, h, w)`` in [-1, 1] (the restorer's range) on ``device``: :func:`photo_canvas` of each photo."""
    return torch.stack([photo_canvas(h, w, n) for n in names]).mul(2).sub(1).to(device)


def photo_agreement(eager: torch.Tensor, optimised: torch.Tensor) -> dict:
    """Issue 18's quality check of a fast path: LPIPS (AlexNet) and PSNR between the eager and the optimised
    restorations (both ``(N, 3, H, W)`` in [-1, 1]) of :data:`REAL_PHOTOS`, per photo, their maximum / minimum,
    and whether the worst LPIPS is within :data:`PHOTO_LPIPS_TOLERANCE`."""
    from ..metrics.metrics import lpips, psnr

    a, b = ((t.float().clamp(-1, 1) + 1) / 2 for t in (eager, optimised))
    lp = [float(v) for v in lpips(b, a)]
    ps = [float(v) for v in psnr(b, a)]
    return {"photos": list(REAL_PHOTOS[:len(lp)]), "lpips": lp, "psnr": ps, "lpips_max": max(lp),
            "psnr_min": min(ps), "tolerance": PHOTO_LPIPS_TOLERANCE, "within": max(lp) <= PHOTO_LPIPS_TOLERANCE}


def write_stream_frames(folder: Path, n: int, h: int, w: int, pan: int = 16) -> list[Path]:
    """``n`` PNG frames ``f0000.png ...`` of ``h x w`` in ``folder`` (the project's ``save_image``): windows of one
    photo, shifted by a pixel per frame (a slow pan, row by row: distinct frames up to ``(pan + 1) ** 2``)."""
    from ..io.images import save_image

    canvas = photo_canvas(h + pan, w + pan)
    paths = []
    for i in range(n):
        dy, dx = (i // (pan + 1)) % (pan + 1), i % (pan + 1)
        paths.append(folder / f"f{i:04d}.png")
        save_image(paths[-1], canvas[:, dy:dy + h, dx:dx + w])
    return paths


def same_images(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same file names with the same decoded pixels."""
    import numpy as np

    from ..io.images import list_images, read_rgb

    fa, fb = list_images(a), list_images(b)
    return [f.name for f in fa] == [f.name for f in fb] and \
        all(np.array_equal(read_rgb(x), read_rgb(y)) for x, y in zip(fa, fb))


def _stream_restorer(bb, optimised: bool, cuda_graphs: bool | None = None, vae_attention: str | None = None):
    """The restorer of the ``stream`` part: bench_restore's optimised variant (phi- fused, torch.compile, on CUDA
    with channels_last, cuDNN autotuning and CUDA graphs) or, on the CPU / ``--no-compile``, the eager one; either
    with the VAE attention ``vae_attention`` (:mod:`~nifi_lib.diffusion.vae_attention`)."""
    from ..restoration.restorer import Restorer

    if optimised:
        return Restorer(bb, compile=True, fuse_lora=True, cuda_graphs=cuda_graphs, vae_attention=vae_attention)
    return Restorer(bb, vae_attention=vae_attention)


def stream_vae_attention(args) -> str | None:
    """The stream part's VAE attention kind: ``--vae-attention chunked`` or ``sdpa`` (``both``: SDPA, the A/B's
    reference); unset: ``None``, the restorer's default (:func:`~nifi_lib.restoration.restorer.default_vae_attention`:
    chunked for the compiled restorer on CUDA)."""
    if args.vae_attention is None:
        return None
    return "chunked" if args.vae_attention == "chunked" else "sdpa"


def _stream_variant(bb) -> str:
    """The name of the optimised restorer's fast paths, as switched on in ``bb``."""
    return "optimised (fused phi-, torch.compile" + (", CUDA graphs)" if bb.fast_paths.get("cuda_graphs") else ")")


def bench_stream(args, device: torch.device, budget: Budget, results: dict, out: Path | None) -> None:
    """Issue 18 throughput mode: frames per second of the real ``nifi restore`` loop
    (:func:`~nifi_lib.restoration.cli.restore_stream`: PNG decode -> restore -> PNG encode + atomic write) over
    a temporary folder of ``--stream-frames`` frames, once per ``--stream-modes`` entry (prefetch depth, PNG
    encoding threads, PNG level), after one warm-up batch (compilation is not timed); beside it the model-only time
    of a pre-loaded batch (:func:`measure`) and the host's decode / encode time of one frame, so the host's share is
    visible; and whether every mode wrote the same pixels."""
    import shutil
    import tempfile

    from ..diffusion.latents import to_model_range, to_unit_range
    from ..io.images import load_image, probe_rgb, save_image, to_uint8_hwc
    from ..restoration.cli import restore_stream
    from ..restoration.lora import RESTORER, add_restorer_adapters

    (h, w), n, b, modes = stream_settings(args)
    b = min(b, n)
    res = results.setdefault("stream", {"size": f"{h}x{w}", "frames": n, "batch": b, "photo": STREAM_PHOTO,
                                        "rows": {}, "notes": []})
    if budget.left() < args.reserve:
        res["notes"].append("skipped (time budget)")
        return
    if n % b:
        res["notes"].append(f"{n} frames in batches of {b}: the last batch has {n % b} (warmed up too)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    optimised = device.type == "cuda" and not args.no_compile
    log(f"stream: building the backbone ({'optimised' if optimised else 'eager'} restorer)")
    bb = build_backbone(args.tiny, device, dtype)
    add_restorer_adapters(bb, rank=args.rank)
    randomize_adapter(bb.transformer, RESTORER, seed=1)
    randomize_adapter(bb.vae, RESTORER, seed=2)
    kind = stream_vae_attention(args)
    restorer = _stream_restorer(bb, optimised, vae_attention=kind)
    res["variant"] = _stream_variant(bb) if optimised else "eager"
    res["vae_attention"] = bb.fast_paths.get("vae_attention", "sdpa")   # what the restorer runs
    res["dtype"] = str(dtype).replace("torch.", "")
    seed, pin = 0, device.type == "cuda"
    with tempfile.TemporaryDirectory(prefix="nifi-stream-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "in").mkdir()
        t = time.perf_counter()
        files = write_stream_frames(tmp / "in", n, h, w)
        res["write_inputs_s"] = round(time.perf_counter() - t, 3)
        res["input_mib"] = round(sum(f.stat().st_size for f in files) / 2 ** 20, 2)
        log(f"stream: {n} frames of {h}x{w} written ({res['input_mib']:.1f} MiB) in {res['write_inputs_s']:.1f} s")

        # one batch in memory: the host's decode time of a frame, then the warm-up (compiles, records graphs)
        t = time.perf_counter()
        first = torch.stack([load_image(f) for f in files[:b]])
        res["decode_ms_per_frame"] = (time.perf_counter() - t) * 1e3 / len(first)
        x = to_model_range(first).to(device)
        t = time.perf_counter()
        try:
            restorer.restore(x, seed=[seed] * b)
        except Exception as e:  # noqa: BLE001 - as bench_restore: compile without CUDA graphs, and say so
            if not bb.fast_paths.get("cuda_graphs"):
                raise
            res["notes"].append(f"CUDA graphs failed ({e!r}); the optimised restorer runs without them")
            log(f"stream: CUDA graphs FAILED ({e!r}); without them")
            torch._dynamo.reset()
            for key in ("compile_transformer", "compile_vae", "cuda_graphs"):
                bb.fast_paths.pop(key, None)
            restorer = _stream_restorer(bb, optimised, cuda_graphs=False, vae_attention=kind)
            res["variant"] = _stream_variant(bb)
            t = time.perf_counter()
            restorer.restore(x, seed=[seed] * b)
        sync(device)
        res["first_batch_s"] = round(time.perf_counter() - t, 3)
        restorer.restore(x, seed=[seed] * b)          # the second call records the CUDA graphs
        for _ in range(2 if n % b else 0):           # the last, shorter batch: compiled and recorded now too
            restorer.restore(x[:n % b], seed=[seed] * (n % b))
        sync(device)                                 # (no graph is captured while a prefetch thread pins memory)
        log(f"stream: warm-up batch {res['first_batch_s']:.1f} s")

        model = measure(functools.partial(restorer.restore, x, seed=[seed] * b), device, warmup=1,
                        iters=args.iters, back_to_back=False)
        model["ms_per_frame"] = model["median_ms"] / b
        res["model_only"] = model
        imgs = to_uint8_hwc(to_unit_range(restorer.restore(x, seed=[seed] * b))).cpu()   # as restore_stream
        (tmp / "encode").mkdir()
        t = time.perf_counter()
        for i, img in enumerate(imgs):
            save_image(tmp / "encode" / f"{i}.png", img.numpy())
        res["encode_ms_per_frame"] = (time.perf_counter() - t) * 1e3 / len(imgs)
        log(f"stream: model only {model['ms_per_frame']:.1f} ms/frame (batch {b}); host, one thread: decode "
            f"{res['decode_ms_per_frame']:.1f} ms/frame, encode + atomic write {res['encode_ms_per_frame']:.1f} ms/frame")
        del x, first, imgs

        sizes = [(f, probe_rgb(f)) for f in files]
        ref: Path | None = None
        same: list[bool] = []
        for mode in modes:
            name = mode_name(mode)
            if budget.left() < args.reserve:
                res["notes"].append(f"{name} skipped (time budget)")
                continue
            depth, writers, level = mode
            dst = tmp / f"out_{name}"
            dst.mkdir()
            sync(device)
            t = time.perf_counter()
            k = restore_stream(restorer, [(f, dst / f.name, wh) for f, wh in sizes], batch_size=b, prefetch=depth,
                               read=load_image, seed=seed, pin=pin, writers=writers, png_level=level)
            sync(device)
            sec = time.perf_counter() - t
            row = {"prefetch": depth, "writers": writers, "png_level": level, "frames": k, "seconds": round(sec, 3),
                   "fps": k / sec, "ms_per_frame": sec * 1e3 / k,
                   "host_share": 1 - model["ms_per_frame"] / (sec * 1e3 / k),
                   "output_mib": round(sum(f.stat().st_size for f in dst.iterdir()) / 2 ** 20, 2)}
            if ref is None:
                ref = dst
            else:
                row["identical_to_first"] = same_images(ref, dst)   # decoded pixels (any PNG level is lossless)
                same.append(row["identical_to_first"])
                shutil.rmtree(dst)
            res["rows"][name] = row
            log(f"stream {name}: {k} frames in {sec:.2f} s: {row['fps']:.2f} frames/s, "
                f"{row['ms_per_frame']:.1f} ms/frame (model only {model['ms_per_frame']:.1f})")
            if out is not None:
                (out / "bench.json").write_text(json.dumps(results, indent=1, default=str))
        res["identical_outputs"] = all(same) if same else None   # None: fewer than two depths ran
    del restorer, bb
    free(device)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def summary(results: dict) -> str:
    lines = [f"## nifi bench: {results.get('device')} (torch {results.get('torch')}, diffusers {results.get('diffusers')})", ""]
    tr = results.get("train")
    if tr:
        lines += ["### Training step (batch 4, 512x512, NiFiTrainer.train_step)", "",
                  f"analytic work: {tr.get('flops', {}).get('total', float('nan')) / 1e12:.1f} TFLOP/step", "",
                  "| variant | median ms | back-to-back ms | peak GiB | TFLOP/s | x eager | first call s |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in tr["variants"].items():
            if "error" in m:
                lines.append(f"| {name} | error: {m['error'][:60]} | | | | | |")
                continue
            lines.append(f"| {name} | {m['median_ms']:.0f} | {m['back_to_back_ms']:.0f} | {m['peak_gib']:.1f} | "
                         f"{m['tflops']:.0f} | {m.get('speedup', 1.0):.2f} | {m['first_call_s']:.1f} |")
        lines += [f"notes: {tr['notes']}" if tr.get("notes") else "", ""]
        la = tr.get("loss_agreement")
        if la:
            lines += [f"loss check (issue 18; optimised = {la.get('optimised')}; same start, adapters' SHA-256 "
                      f"{(la.get('checksum') or '?')[:12]}): {la.get('verdict', la.get('rel_diff'))}",
                      "curves from: " + "; ".join(f"{m} ({r.get('precision')}): {r.get('error') or r.get('source')}"
                                                  for m, r in la.get("runs", {}).items()), ""]
    rs = results.get("restore")
    if rs:
        lines += ["### Restorer.restore", "",
                  "| frame | eager ms | eager GiB | eager TFLOP/s | optimised ms | optimised GiB | optimised TFLOP/s | x eager |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, row in rs["rows"].items():
            e, o = row.get("eager", {}), row.get("optimised", {})
            if "error" in e or "error" in o:
                lines.append(f"| {k} | {e.get('error', '')[:50]} | | | {o.get('error', '')[:50]} | | | |")
            f = lambda m, key, fmt: (format(m[key], fmt) if key in m and isinstance(m[key], (int, float)) else "-")  # noqa: E731
            lines.append(f"| {k} | {f(e, 'median_ms', '.1f')} | {f(e, 'peak_gib', '.2f')} | {f(e, 'tflops', '.0f')} | "
                         f"{f(o, 'median_ms', '.1f')} | {f(o, 'peak_gib', '.2f')} | {f(o, 'tflops', '.0f')} | "
                         f"{row.get('speedup', float('nan')):.2f} |")
            if "optimised_vae_tile64" in row:
                t = row["optimised_vae_tile64"]
                lines.append(f"| {k} + vae_tile 64 | | | | {t['median_ms']:.1f} | {t['peak_gib']:.2f} | | |")
        lines += ["", f"ablation at the target frame (ms): {rs.get('ablation_1024')}",
                  f"breakdown eager (ms): {rs.get('breakdown_eager')}",
                  f"breakdown optimised (ms): {rs.get('breakdown_optimised')}",
                  f"optimised vs eager rel. L2 error: {rs.get('optimised_vs_eager_rel_err')}",
                  f"optimised vs eager on real photos: {rs.get('optimised_vs_eager_photos')}",
                  f"FLOP check: {rs.get('flop_check')}", f"SDPA (ms): {rs.get('sdpa')}",
                  f"notes: {rs.get('notes')}", ""]
        lines += vae_attention_summary(rs.get("vae_attention") or {})
        lines += size_bucket_summary(rs.get("size_bucket") or {})
        if rs.get("fp8"):
            f = rs["fp8"]
            lines += [f"FP8 transformer ({f.get('layers')} layers): {f.get('median_ms', float('nan')):.1f} ms, "
                      f"first call {f.get('first_call_s', float('nan')):.1f} s, vs eager rel. L2 "
                      f"{f.get('vs_eager_rel_err')}, photos {f.get('vs_eager_photos')}" if "error" not in f
                      else f"FP8: {f['error']}", ""]
    st = results.get("stream")
    if st:
        lines += stream_summary(st)
    return "\n".join(lines)


def size_bucket_summary(sb: dict) -> list[str]:
    """The restore part's size-bucket A/B (``--size-bucket N``): a new frame size's first call and median as it is
    and bucketed, and what the padding changes on real photos."""
    if not sb:
        return []
    if "error" in sb:
        return [f"size bucket: {sb['error']}", ""]
    lines = [f"### A new frame size ({sb['new_size']}) with and without size_bucket {sb['bucket']} (padded to "
             f"{sb['target']})", "", "| | first call s | median ms |", "|---|---|---|"]
    for name in ("as_is", "bucketed"):
        m = sb.get(name, {})
        lines.append(f"| {name} | {m.get('first_call_s', float('nan')):.2f} | {m.get('median_ms', float('nan')):.1f} |")
    if "bucketed_vs_as_is_photos" in sb:
        lines += ["", f"bucketed vs as is on real photos: {sb['bucketed_vs_as_is_photos']}"]
    return lines + [""]


def vae_attention_summary(va: dict) -> list[str]:
    """The restore part's VAE attention A/B (``--vae-attention both``): each kind's ms per frame size and the
    largest difference of the restored frames from the first kind's."""
    kinds, rows = va.get("kinds", []), va.get("rows", {})
    if len(kinds) < 2 or not rows:
        return []
    a, b = kinds[:2]
    lines = [f"### VAE attention: {a} vs {b} (same restorer, frames and seed)", "",
             f"| frame | restore | {a} ms | {b} ms | x {a} | max abs diff of the frames | photos' LPIPS vs eager, max "
             f"({a} / {b}) |", "|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        if "error" in r:
            lines.append(f"| {k} | {r.get('variant')} | error: {r['error'][:60]} | | | | |")
            continue
        ph = " / ".join(f"{r[x]['vs_eager_photos']['lpips_max']:.4f}" if "vs_eager_photos" in r[x] else "-"
                        for x in (a, b))
        lines.append(f"| {k} | {r['variant']} | {r[a]['median_ms']:.1f} | {r[b]['median_ms']:.1f} | "
                     f"{r['speedup']:.2f} | {r[b][f'max_abs_diff_vs_{a}']:.2e} | {ph} |")
    return lines + [""]


def stream_summary(st: dict) -> list[str]:
    """The ``stream`` part's table: frames/s of the restore loop per mode (prefetch depth, PNG encoding threads and
    level), next to the model alone."""
    model = st.get("model_only", {}).get("ms_per_frame", float("nan"))
    lines = [f"### Restore loop over a folder (PNG decode -> restore -> PNG encode): {st.get('frames')} frames of "
             f"{st.get('size')}, batch {st.get('batch')}, {st.get('variant', '?')} {st.get('dtype', '')}, VAE attention "
             f"{st.get('vae_attention', 'sdpa')}", "",
             "| prefetch | PNG writers | PNG level | frames/s | ms/frame | model-only ms/frame | host share | MiB out |",
             "|---|---|---|---|---|---|---|---|"]
    for r in st.get("rows", {}).values():
        lvl = 6 if r["png_level"] is None else r["png_level"]
        lines.append(f"| {r['prefetch']} | {r['writers']} | {lvl} | {r['fps']:.2f} | {r['ms_per_frame']:.1f} | "
                     f"{model:.1f} | {r['host_share']:.0%} | {r['output_mib']:.1f} |")
    lines += ["", f"identical outputs across modes: {st.get('identical_outputs')}; warm-up batch "
              f"{st.get('first_batch_s', float('nan')):.1f} s; host, one thread: decode "
              f"{st.get('decode_ms_per_frame', float('nan')):.1f} ms/frame, encode + atomic write "
              f"{st.get('encode_ms_per_frame', float('nan')):.1f} ms/frame",
              f"notes: {st.get('notes')}" if st.get("notes") else "", ""]
    return lines


PARTS = {"restore": bench_restore, "train": bench_train, "stream": bench_stream}


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__.split("\n")[0])
    p.add_argument("--part", default="all", choices=["all", *PARTS], help="what to time")
    p.add_argument("--order", default="restore,train",
                   help=f"order of the parts for --part all (of {', '.join(PARTS)})")
    p.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke run of the whole script)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--out", default=None, help="folder for bench.json, the profiler tables and summary.md")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--rank", type=int, default=64, help="LoRA rank of phi-/phi+")
    p.add_argument("--sizes", default=None, help="restore sizes HxWxB,...; the first is the target frame")
    p.add_argument("--opt-sizes", default=None, help="sizes for the optimised restore (default: --sizes)")
    p.add_argument("--eager-sizes", default=None, help="sizes for the eager restore (default: --sizes)")
    p.add_argument("--nchw-variant", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the optimised restore with an NCHW VAE (native GroupNorm) at the target frame")
    p.add_argument("--flop-check", action=argparse.BooleanOptionalAction, default=True,
                   help="check the analytic FLOP count against forward hooks (restore, eager)")
    p.add_argument("--ablation", action=argparse.BooleanOptionalAction, default=True,
                   help="restore: time channels_last and fused LoRA one by one in eager mode")
    p.add_argument("--sdpa", action=argparse.BooleanOptionalAction, default=True,
                   help="time the SDPA backends at the VAE / transformer attention shapes")
    p.add_argument("--vae-attention", default=None, choices=["sdpa", "chunked", "both"],
                   help="restore: the VAE attention of the optimised rows (nifi_lib.diffusion.vae_attention); both: "
                        "sdpa, and an A/B against chunked at each size (ms, max abs difference of the frames; on the "
                        "eager restorer with --no-compile). Default: both on CUDA, else sdpa")
    p.add_argument("--fp8", action="store_true",
                   help="restore: last, the optimised restorer with the transformer's linear layers in FP8 "
                        "(nifi_lib.diffusion.fp8; rowwise scaling) at the target size, with the photo check")
    p.add_argument("--size-bucket", type=int, default=0,
                   help="restore: also time a frame size never seen before (40 rows and 56 columns fewer than the "
                        "target) on the optimised restorer as it is (a new shape) and with Restorer(size_bucket=N) "
                        "(padded to the target: its compiled graph), with the photo check between the two (default: "
                        "0, off)")
    p.add_argument("--train-variants", default="eager,channels_last,compile",
                   help="training variants, in order: eager, channels_last, compile, compile_cudagraphs_chunked "
                        "(CUDA graphs + the chunked VAE attention), compile_cudagraphs")
    p.add_argument("--loss-check", type=int, default=None, metavar="N",
                   help="train: issue 18's loss check over N steps (eager vs optimised in the run's precision, and "
                        "eager fp32 as the precision floor; nifi_lib.bench.train_agreement); 0: off (default: 8 on "
                        "CUDA, else 0). Reuses the eager and compile_cudagraphs variants' steps when they ran")
    p.add_argument("--tiled", action=argparse.BooleanOptionalAction, default=True,
                   help="time the tiled VAE decode at the largest size")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--photo-check", action=argparse.BooleanOptionalAction, default=True,
                   help="restore: LPIPS/PSNR of the optimised vs the eager restore of real photos at the target size "
                        "(needs the AlexNet LPIPS weights; issue 18's <= 0.005)")
    p.add_argument("--grad-ckpt", action="store_true", help="train with gradient checkpointing")
    p.add_argument("--stream-size", default=None,
                   help="stream: frame size HxW (default: 1080x1920; --tiny: 64x96)")
    p.add_argument("--stream-frames", type=int, default=None, help="stream: frames in the folder (default: 48; "
                                                                    "--tiny: 8)")
    p.add_argument("--stream-batch", type=int, default=None, help="stream: --batch_size (default: 4; --tiny: 2)")
    p.add_argument("--stream-modes", default="0,2,2:4,2:4:1",
                   help="stream: the modes to time, in order, each PREFETCH[:PNG_WRITERS[:PNG_LEVEL]] (nifi restore's "
                        "--prefetch, --writers, --png_level; default: %(default)s, the first is the plain loop)")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--deadline", type=float, default=1e9, help="seconds for the whole run; stages past it are skipped")
    p.add_argument("--reserve", type=float, default=20.0, help="seconds kept for writing results")
    p.add_argument("--load-cache", default=None, help="a compile cache saved by an earlier run (--save-cache)")
    p.add_argument("--save-cache", default=None, help="where to write this run's compile cache (default: "
                   "<out>/compile_cache.bin; CUDA and compile only)")
    return p


def _compile_times() -> str | None:
    """``torch._dynamo.utils.compile_times`` (seconds per compiler phase of this process), or None."""
    try:
        return str(torch._dynamo.utils.compile_times(repr="str", aggregate=True))
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"unavailable: {e!r}"


def run(args) -> int:
    import signal

    def _term(signum, frame):  # a `timeout` in front of the run: stop, but still write what was measured
        raise KeyboardInterrupt(f"signal {signum}")
    parts = args.order.split(",") if args.part == "all" else [args.part]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        log(f"--order: unknown part(s) {unknown}; the parts are {', '.join(PARTS)}")
        return 2
    if "stream" in parts:
        try:
            stream_settings(args)
        except ValueError as e:
            log(str(e))
            return 2
    signal.signal(signal.SIGTERM, _term)
    budget = Budget(args.deadline)
    device = torch.device(default_device(args.device))
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    import diffusers

    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "diffusers": diffusers.__version__, "tiny": bool(args.tiny),
                     "argv": sys.argv[1:]}
    try:
        import peft
        results["peft"] = peft.__version__
    except Exception:  # noqa: BLE001
        pass
    log(f"device {results['device']}, torch {results['torch']}, diffusers {results['diffusers']}, "
        f"peft {results.get('peft')}")
    if args.load_cache:   # a missing or foreign file stops the run (a "warm" measurement without it would lie)
        t = time.perf_counter()
        results["compile_cache_loaded"] = {**load_compile_cache(args.load_cache),
                                           "seconds": round(time.perf_counter() - t, 2)}
        log(f"loaded compile cache {results['compile_cache_loaded']}")
    rc = 0
    for part in parts:
        torch._dynamo.reset()          # each part compiles from scratch (its first-call time is its own)
        torch._dynamo.utils.counters.clear()
        try:
            PARTS[part](args, device, budget, results, out)
        except BaseException as e:  # noqa: BLE001 - keep what was measured (also on SIGTERM / Ctrl-C)
            rc = 1
            results.setdefault("errors", []).append(f"{part}: {e!r}")
            log(f"{part} FAILED: {e!r}")
            traceback.print_exc()
            free(device)
        c = torch._dynamo.utils.counters
        results.setdefault("dynamo", {})[part] = {
            "graph_breaks": sum(c["graph_break"].values()), "graph_break_reasons": dict(list(c["graph_break"].items())[:10]),
            "unique_graphs": c["stats"].get("unique_graphs", 0), "calls_captured": c["stats"].get("calls_captured", 0),
            # where a first call's seconds go, and whether the caches hit (issue 18: a warm cache that did not help)
            "cache_counters": {k: dict(c[k]) for k in ("inductor", "aot_autograd") if c.get(k)},
            "compile_times": _compile_times()}
        log(f"{part}: dynamo {results['dynamo'][part]}")
        cache_out = args.save_cache or (out / "compile_cache.bin" if out is not None else None)
        if cache_out is not None and not args.no_compile and device.type == "cuda":
            try:   # inductor's compiled artifacts, so that a later run on a fresh machine can skip compiling
                n = save_compile_cache(cache_out)
                results["compile_cache_saved"] = {"path": str(cache_out), "bytes": n}
                log(f"compile cache: {(n or 0) / 2 ** 20:.1f} MiB in {cache_out}")
            except Exception as e:  # noqa: BLE001
                log(f"compile cache not saved: {e!r}")
        if out is not None:
            (out / "bench.json").write_text(json.dumps(results, indent=1, default=str))
        if any("KeyboardInterrupt" in str(e) for e in results.get("errors", [])):
            break   # stopped from outside: what was measured (and where the compile time went) is written above
    text = summary(results)
    if out is not None:
        (out / "summary.md").write_text(text)
    print("\n" + text, flush=True)
    log(f"done in {budget.elapsed():.0f} s")
    return rc


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
