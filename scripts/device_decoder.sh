#!/bin/bash
# scripts/device_decoder.sh S: job D of scripts/device_session.sh (issue 17), run from the repo copy in S/repo.
# The decoder-only adversarial fine-tune of a prior trained before (`nifi embedded-assets --stage decoder`,
# configs/embedded_assets_v3.yaml's `decoder` section), then NiFi beside its w/o-t0 ablation on that backbone.
# Inputs: S/pack (a later call's carried .pack/: prior/, pairs/ without the clean images, clean.md5 of them);
# the frames stage renders the ground truth again and the clean images are copied from it and checked.
# env: DEV (cuda), D_CONFIG (the assets YAML), D_VARIANT_GAN (a second decoder with that adversarial weight, measured only), D_WAIT (s)
set -u
S=$1
EA="python3 -m nifi_lib.cli embedded-assets --config ${D_CONFIG:-configs/embedded_assets_v3.yaml} --out $S/ea --device ${DEV:-cuda} --quiet"
echo "[D] frames at $(date -u +%T)"
nice -n 10 $EA --stage frames --threads 4 || exit 1
echo "[D] frames done at $(date -u +%T); waiting for the pack"
while [ ! -f $S/pack.done ]; do sleep 5; done
rm -rf $S/ea/prior $S/ea/pairs && cp -r $S/pack/prior $S/ea/prior && cp -r $S/pack/pairs $S/ea/pairs || exit 1
# ./embedded/<world>/rate_<r>/<split>/clean/<view>.png is the world's ground-truth frame <view>.png
(cd $S/ea/pairs && while read -r _ f; do
   w=$(echo "$f" | cut -d/ -f3); mkdir -p "$(dirname "$f")"
   cp "$S/ea/scenes/train/$w/images/$(basename "$f")" "$f" || exit 1
 done < $S/pack/clean.md5 && md5sum -c --quiet $S/pack/clean.md5) \
  || { echo "[D] the rendered frames are not the pairs' clean images"; exit 1; }
echo "[D] $(wc -l < $S/pack/clean.md5) clean images rebuilt from the frames, checksums equal"
w=0; while [ ! -f $S/B.gpufree ] && [ $w -lt ${D_WAIT:-300} ]; do sleep 5; w=$((w + 5)); done
echo "[D] decoder at $(date -u +%T) (waited $w s for the bench's GPU-bound parts)"
pv=""
if [ -n "${D_VARIANT_GAN:-}" ]; then
  mkdir -p $S/eb && ln -sfn $S/ea/scenes $S/eb/scenes && ln -sfn $S/ea/prior $S/eb/prior
  sed -E "s/vae_gan_weight: [0-9.e+-]+/vae_gan_weight: $D_VARIANT_GAN/" ${D_CONFIG:-configs/embedded_assets_v3.yaml} > $S/v3_variant.yaml
  python3 -m nifi_lib.cli embedded-assets --config $S/v3_variant.yaml --out $S/eb --device ${DEV:-cuda} --quiet \
    --stage decoder > $S/D.variant.log 2>&1 & pv=$!
fi
$EA --stage decoder; rc=$?
[ -n "$pv" ] && { wait $pv; echo "[D] variant (adversarial weight $D_VARIANT_GAN) rc $?"; }
echo $rc > $S/D.decoder.rc
[ $rc = 0 ] || exit $rc
exec bash scripts/device_nifi_pair.sh D $S/D.wo.log $EA
