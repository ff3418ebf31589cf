#!/bin/bash
# scripts/device_bench3.sh S: job B of scripts/device_session.sh with B_JOB=3 (issue 18, "done when"): the whole
# bench in one session, for an H200, the GPU to itself, in five processes that share one TORCHINDUCTOR_CACHE_DIR
# (S/indc, empty at first), run from the repo copy in S/repoB:
#   restore_cold  1024^2 eager + optimised, 1080x1920 optimised, each with both VAE attention kinds (SDPA's cutlass
#                 kernel and the exact chunked 512-wide head) and each kind's real-photo check against eager; the
#                 SDPA backends at the attention shapes; the profiler table of the optimised 1024^2 restore; a new
#                 frame size (984x968) as it is and with size_bucket 128 (padded to 1024^2, the compiled graph);
#                 last, the transformer in FP8 (rowwise float8 GEMMs) at 1024^2 with its photo check
#   stream        the 1080p throughput mode (the `nifi restore` loop, batch 4, --prefetch 2, 4 PNG writers, level 1;
#                 and the plain loop) with the chunked VAE attention
#   train_cold    eager, compile + CUDA graphs with the chunked VAE attention, compile + CUDA graphs, and the loss
#                 check over 8 identical steps (eager bf16, optimised bf16, eager fp32)
#   train_warm    compile + CUDA graphs in a new process on the warm cache (the first call of a user's second job)
#   restore_warm  the restore sizes again in a new process (a frame size seen before, warm cache)
# env: B_ARGS (e.g. "--tiny --device cpu" for a dry run), B_SIZES, B_STREAM, B_TRAIN_DEADLINE; for less device time
#      B_STREAM_RUN=0 (no stream part), B_TRAIN_VARIANTS=eager,compile_cudagraphs (no chunked training variant),
#      B_LOSS_STEPS=0 (no loss check), B_TRAIN_WARM=0 / B_RESTORE_WARM=0 (no second
#      training / restore process), B_RESTORE_COLD=0 (no first restore process: a training-only run)
set -u
S=$1; O=$S/bench; mkdir -p $O
export TORCHINDUCTOR_CACHE_DIR=$S/indc
B="python3 -m bench.gpu_bench ${B_ARGS:-} --no-flop-check --no-ablation --no-tiled --no-nchw-variant"
SIZES=${B_SIZES:---eager-sizes 1024x1024x1 --opt-sizes 1024x1024x1,1080x1920x1}
STREAM=${B_STREAM:---stream-size 1080x1920 --stream-frames 32 --stream-batch 4 --stream-modes 0,2:4:1}
rc=0
run() { local name=$1; shift; echo "[B] $name at $(date -u +%T)"; T=$(date +%s)
        $B "$@" --out $O/$name > $O/$name.log 2>&1 || { rc=1; echo "[B] $name failed"; }
        touch $O/$name.done; echo "[B] $name: $(( $(date +%s) - T )) s, cache folder $(du -sm $TORCHINDUCTOR_CACHE_DIR 2>/dev/null | cut -f1) MB"; }
[ "${B_RESTORE_COLD:-1}" = 1 ] && run restore_cold --part restore --iters 8 --vae-attention both --size-bucket 128 --fp8 --profile $SIZES
[ "${B_STREAM_RUN:-1}" = 1 ] && run stream --part stream --no-profile --no-sdpa --vae-attention chunked $STREAM
run train_cold --part train --no-profile --no-sdpa --train-variants ${B_TRAIN_VARIANTS:-eager,compile_cudagraphs_chunked,compile_cudagraphs} \
  --iters 4 --warmup 1 --loss-check ${B_LOSS_STEPS:-8} --deadline ${B_TRAIN_DEADLINE:-760}
[ "${B_TRAIN_WARM:-1}" = 1 ] && run train_warm --part train --no-profile --no-sdpa --train-variants compile_cudagraphs --iters 4 --warmup 1 --loss-check 0
touch $S/B.gpufree
[ "${B_RESTORE_WARM:-1}" = 1 ] && run restore_warm --part restore --no-profile --no-sdpa --no-photo-check --iters 5 --vae-attention both --size-bucket 128 $SIZES
exit $rc
