#!/bin/bash
# scripts/device_nifi_pair.sh TAG WO_LOG EA...: NiFi beside its w/o-t0 ablation (`EA --stage nifi` and
# `EA --stage nifi_wo_t0`, two processes on one GPU, trained the same way), for the device jobs D and N of
# scripts/device_session.sh; the ablation's output goes to WO_LOG. Exits non-zero if either failed.
set -u
TAG=$1; WO=$2; shift 2
echo "[$TAG] nifi + nifi_wo_t0 at $(date -u +%T)"
"$@" --stage nifi_wo_t0 > "$WO" 2>&1 & p=$!
"$@" --stage nifi; rc=$?
wait $p || rc=1
echo "[$TAG] done at $(date -u +%T) rc $rc"
exit $rc
