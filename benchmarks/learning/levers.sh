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
#   AGAINST=small-qwen3_vl-half-pixels-600 LEVERS=mirror OUT=/tmp/out benchmarks/learning/levers.sh
# LEVERS names the levers to run, in order, from the table below (default: base pixels-2x prompt
# virtual); EXTRA (added to every lever) and SIZE, SEED, CLIPS (212 here), WORK and AGAINST (a run
# folder every lever is also paired with) as in learning.sh.
# Measured on one H100 (2026-12-05, results/small-qwen3_vl-*-600): the base lever 6.2 minutes with
# the data stages (synthesize 78 s, format 52 s, train 124 s of which 75 s of 600 steps, infer
# 46 s), each further lever of the same data about 4 minutes (3.6-4.3). pixels-2x renders the
# clips again at 960x540 (2.25 times the pixels; 480 image tokens a frame against 220 for
# Qwen3-VL), in a clone of its own ($WORK-pixels-2x: a lever that changes synthesize gets one, so
# the others keep theirs): its data stages again, at about 2.25 times their cost, and about twice
# the training and inference time (an estimate, not measured).
# The base's image budget is learning.sh's: format.max_pixels 115200 since 2026-12-06 (the
# half-pixels lever of the runs above, now the default; full-pixels is the budget they had).
# The order follows the committed run's measurements (results/<run>/depth_errors.md): its depth
# has no bias by lens (median predicted/true depth 0.97-1.03 on both lens types), while far
# vehicles are too small to see (35-50 m: 22 px wide, under one image token; 26 % answered within
# 15 % of their range), so the pixel budget comes before the camera inputs.
# mirror (format.mirror_train) adds every training frame flipped left to right (40,000 training
# samples from the same 200 clips), from the 3,000-step run's measurements (results/README.md): the
# training loss kept falling while the held-out scores stayed, the reading of a model that fits its
# training clips; more clips (learning.sh's CLIPS) is the other lever for it.
# sky (format.crop_above_deg 20) cuts the rows more than 20 degrees above the optical axis off
# every frame: on the benchmark's pinhole frames (640x360) 137 rows of the front camera
# (principal point 252 rows down, fy 315 px), 134 of the cross cameras', none of the 70-degree
# ones' (186 rows down, fy 524: the ray lies above the image). The half budget then shows a front
# frame at 544x192 pixels instead of 448x224 (1.21 times wider, 1.38 times taller; 102 image
# tokens against 98), for vehicles at 35-50 m that are 22 px wide at full size
# (results/README.md). A 3.5 m truck nearer than about 5.4 m loses its top.
# centre (format.camera_input image_centre) writes each centre as its pixel and its virtual
# distance (Omni3D's projected centre and virtual depth), from "How the far vehicles are missed"
# (results/README.md): 0.57-0.73 of the missed far vehicles had an answered box over them whose
# rectangle was off in place or size; with the pixel in the answer, its place in the image no
# longer rides on the depth.
set -uo pipefail
ARCH=${ARCH:-qwen3_vl}
export STEPS=${STEPS:-600}
# 212 clips: the data of the lever table's runs (learning.sh's default is 424 since 2026-12-06);
# CLIPS=424 ranks levers on the larger data, against a base lever run on it
export CLIPS=${CLIPS:-212}
declare -A OVERRIDES=(
  [base]=""
  [prompt]="-S format.camera_input=prompt"
  [virtual]="-S format.camera_input=virtual_camera"
  [centre]="-S format.camera_input=image_centre"
  [full-pixels]="-S format.max_pixels=230400"
  [pixels-2x]="-S synthesize.width=960 -S synthesize.height=540 -S format.max_pixels=518400"
  [mirror]="-S format.mirror_train=true"
  [sky]="-S format.crop_above_deg=20"
)
code=0
for lever in ${LEVERS:-base pixels-2x prompt virtual}; do
  [ -n "${OVERRIDES[$lever]+set}" ] || { echo "unknown lever '$lever' (known: ${!OVERRIDES[*]})" >&2; exit 2; }
  echo "$(date +%T) lever $lever: ${OVERRIDES[$lever]:-no override}"
  work=${WORK:-/tmp/learning}
  [[ ${OVERRIDES[$lever]} == *synthesize.* ]] && work=$work-$lever
  WORK=$work ARCHS=$ARCH TAG="$lever-$STEPS" \
    EXTRA="-S infer.checkpoints=none -S train.save_every=0 ${OVERRIDES[$lever]} ${EXTRA:-}" \
    benchmarks/learning/learning.sh || code=1
done
exit "$code"
