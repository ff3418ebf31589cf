#!/bin/bash
# scripts/device_bench2.sh S: job B of scripts/device_session.sh with B_JOB=2 (issue 18, round 3), run from the repo
# copy in S/repo: the levers measured after run 5, in two processes sharing one TORCHINDUCTOR_CACHE_DIR (S/indc):
#   restore (1024^2 eager + optimised, 1080x1920 optimised) with each VAE attention kind (--vae-attention both:
#   the exact chunked 512-wide head vs SDPA's cutlass kernel, A/B in one process) and the real-photo check;
#   train (eager, compile/CUDA graphs with the chunked VAE attention, compile/CUDA graphs; run 6 had no chunked
#   variant: B_TRAIN_VARIANTS=eager,compile_cudagraphs) with the loss agreement check (--loss-check: N identical steps of the
#   eager bf16, optimised bf16 and eager fp32 paths from the same weights and seeds).
# env: B_ARGS (e.g. "--tiny --device cpu" for a dry run), B_SIZES, B_LOSS_STEPS
set -u
S=$1; O=$S/bench; mkdir -p $O
export TORCHINDUCTOR_CACHE_DIR=$S/indc
B="python3 -m bench.gpu_bench ${B_ARGS:-} --no-profile --no-flop-check --no-ablation --no-tiled --no-nchw-variant"
SIZES=${B_SIZES:---eager-sizes 1024x1024x1 --opt-sizes 1024x1024x1,1080x1920x1}
rc=0
run() { local name=$1; shift; echo "[B] $name at $(date -u +%T)"; T=$(date +%s)
        $B "$@" --out $O/$name > $O/$name.log 2>&1 || { rc=1; echo "[B] $name failed"; }
        echo "[B] $name: $(( $(date +%s) - T )) s"; }
run restore_attn --part restore --iters 8 --vae-attention both $SIZES
touch $S/B.gpufree
run train_check --part train --train-variants ${B_TRAIN_VARIANTS:-eager,compile_cudagraphs_chunked,compile_cudagraphs} --iters 4 --warmup 1 \
  --loss-check ${B_LOSS_STEPS:-8} --deadline ${B_TRAIN_DEADLINE:-700}
exit $rc
