#!/bin/bash
# scripts/device_bench.sh S: job B of scripts/device_session.sh (issue 18), run from the repo copy in S/repo.
# `python -m bench.gpu_bench` in five processes that share one TORCHINDUCTOR_CACHE_DIR (S/indc, empty at first):
#   restore_cold (1024^2 eager + optimised, 1080x1920 optimised) and stream (1080p frames/s of the real
#   `nifi restore` loop, --prefetch 0 vs 2) with the GPU to themselves, then S/B.gpufree lets job D start;
#   train_cold (eager + compile/CUDA graphs: the first call with an empty cache), train_warm (a new process,
#   the same cache: the first call a user's second job pays) and restore_warm (the sizes again, warm cache).
# env: B_ARGS (e.g. "--tiny --device cpu" for a dry run), B_STREAM (the stream part's size flags)
set -u
S=$1; O=$S/bench; mkdir -p $O
export TORCHINDUCTOR_CACHE_DIR=$S/indc
B="python3 -m bench.gpu_bench ${B_ARGS:-} --no-profile --no-flop-check --no-ablation --no-sdpa --no-tiled --no-nchw-variant"
SIZES=${B_SIZES:---eager-sizes 1024x1024x1 --opt-sizes 1024x1024x1,1080x1920x1}
STREAM=${B_STREAM:---stream-size 1080x1920 --stream-frames 48 --stream-batch 4}
rc=0
run() { local name=$1; shift; echo "[B] $name at $(date -u +%T)"; T=$(date +%s)
        $B "$@" --out $O/$name --save-cache $S/$name.cache.bin > $O/$name.log 2>&1 || { rc=1; echo "[B] $name failed"; }
        echo "[B] $name: $(( $(date +%s) - T )) s, cache folder $(du -sm $TORCHINDUCTOR_CACHE_DIR 2>/dev/null | cut -f1) MB"; }
run restore_cold --part restore --iters 5 $SIZES
run stream --part stream $STREAM
touch $S/B.gpufree
run train_cold --part train --train-variants eager,compile_cudagraphs --iters 4 --warmup 1
run train_warm --part train --train-variants compile_cudagraphs --iters 4 --warmup 1
run restore_warm --part restore --iters 5 $SIZES
exit $rc
