#!/usr/bin/env bash
# Rank the learning benchmark's levers with short runs (issue 26, item 2): one architecture, one
# clone, the data stages run once; each lever is one `dvc exp run` of learning.sh's settings plus
# its overrides, trained for STEPS (default 600) and scored on the final model only (no zero-shot
# or checkpoint columns). Results go where learning.sh puts them, one folder per lever
# ($OUT/<size>-<arch>[-s<seed>]-<tag>), so learning_report.py's table of every run is the lever
# table (camera input and pixel budget are columns).
#
# Usage, on a GPU machine, from the repository root:
#   ARCH=qwen3_vl OUT=/tmp/out benchmarks/learning/levers.sh
#   LEVERS="base prompt" ARCH=qwen2_5_vl SEED=1 OUT=/tmp/out benchmarks/learning/levers.sh
# LEVERS names the levers to run, in order, from the table below (default: base prompt virtual
# half-pixels); EXTRA (added to every lever) and SIZE, SEED, WORK as in learning.sh.
# About 5.5 minutes a lever on one H200 at 600 steps (train 0.28 s a step, one infer column,
# evaluate), after about 6 minutes of data stages.
set -uo pipefail
ARCH=${ARCH:-qwen3_vl}
export STEPS=${STEPS:-600}
declare -A OVERRIDES=(
  [base]=""
  [prompt]="-S format.camera_input=prompt"
  [virtual]="-S format.camera_input=virtual_camera"
  [half-pixels]="-S format.max_pixels=115200"
)
code=0
for lever in ${LEVERS:-base prompt virtual half-pixels}; do
  [ -n "${OVERRIDES[$lever]+set}" ] || { echo "unknown lever '$lever' (known: ${!OVERRIDES[*]})" >&2; exit 2; }
  echo "$(date +%T) lever $lever: ${OVERRIDES[$lever]:-no override}"
  ARCHS=$ARCH TAG="$lever-$STEPS" \
    EXTRA="-S infer.zero_shot=false -S infer.checkpoints=none -S train.save_every=0 ${OVERRIDES[$lever]} ${EXTRA:-}" \
    benchmarks/learning/learning.sh || code=1
done
exit "$code"
