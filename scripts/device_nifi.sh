#!/bin/bash
# scripts/device_nifi.sh S: job N of scripts/device_session.sh (issue 17), run from the repo copy in S/repo.
# NiFi beside its w/o-t0 ablation on more worlds (configs/embedded_assets_v3.yaml: the preset's
# paired_prior_worlds), on a backbone trained before: the frames, the 3DGS fits and the pairs are built here
# (`embedded-assets --stage frames`, then `--stage scenes,pairs`); the backbone arrives in a later call's carried
# .pack/ (prior_decoder/: the prior with its fine-tuned decoder, the folder the NiFi stages train on); then the
# config's evaluate stage scores the result on the machine.
# env: DEV (cuda), N_CONFIG (the assets YAML)
set -u
S=$1
EA="python3 -m nifi_lib.cli embedded-assets --config ${N_CONFIG:-configs/embedded_assets_v3.yaml} --out $S/ea --device ${DEV:-cuda} --quiet"
echo "[N] frames at $(date -u +%T)"
$EA --stage frames --threads 4 || exit 1
while [ ! -f $S/G.done ]; do sleep 5; done   # gsplat's one CUDA build, by the session script
echo "[N] scenes + pairs at $(date -u +%T)"
$EA --stage scenes,pairs || exit 1
echo "[N] pairs done at $(date -u +%T): $(ls $S/ea/pairs/embedded | wc -l) worlds; waiting for the pack"
while [ ! -f $S/pack.done ]; do sleep 5; done
rm -rf $S/ea/prior_decoder && cp -r $S/pack/prior_decoder $S/ea/prior_decoder || exit 1
bash scripts/device_nifi_pair.sh N $S/N.wo.log $EA || exit 1
echo "[N] evaluate at $(date -u +%T)"   # the held-out and validation tables on the GPU (<out>/evaluation/)
$EA --stage evaluate; rc=$?
echo "[N] evaluated at $(date -u +%T) rc $rc"
exit $rc
