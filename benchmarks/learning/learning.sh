#!/usr/bin/env bash
# The learning benchmark: a model of the real architecture, initialised at random, trained by this
# repository's own stages on synthetic RDS-HQ clips, evaluated on held-out clips, at every
# checkpoint. One `dvc exp run` of the whole pipeline per architecture, with the parameters below
# (stage parameters only; nothing else changes). Results: benchmarks/learning/results/learning.md.
#
# Data (the default since 2026-12-06, CLIPS 424): 424 clips x 5 cameras x 2 s; videos rendered at
# 10 fps (the 30 Hz poses and 10 Hz labels are unchanged; extract maps frames by time), every
# video frame extracted (skip_frames 1): 20 frames per camera and clip, 41,200 training frames
# from 412 clips and 1,200 evaluation frames from 12 held-out clips, the clips that the 212-clip
# data of the earlier runs holds out (so every run scores on the same frames). Rendering at 10 fps
# instead of 30 gives the same 10 Hz frames for a third of the rendering time. 424 clips against
# 212 at 2,000 steps: AP2D50 +0.108 [+0.078, +0.142] on seed 0 (results/learning.md).
#
# Usage, on a GPU machine, from the repository root:
#   OUT=/tmp/out benchmarks/learning/learning.sh                      # both architectures
#   ARCHS=qwen3_vl OUT=/tmp/out benchmarks/learning/learning.sh       # one
# SIZE (small), STEPS (2000) and EXTRA (more -S overrides, word-split) change the runs; SEED (0)
# seeds the data (synthesize.seed, format.split_seed) and the initialisation and data order
# (train.seed), and TAG names a lever run: results then go to <size>-<arch>-s<SEED>-<TAG>
# (each part only when set; SEED 0 adds none), e.g.
#   SEED=1 TAG=virtual EXTRA="-S format.camera_input=virtual_camera" OUT=/tmp/out benchmarks/learning/learning.sh
# CLIPS (424; at least 212) sets the clips synthesized; above 212 the evaluation holds out the
# clips the 212-clip data holds out (format.eval_clip_ids from held_out_ids.py), so the run scores
# on the same frames as the runs on 212, and every further clip trains. AGAINST names the run
# folder a run changes (written to against.txt; learning_report.py pairs the two), e.g. the best
# configuration on seed 1, against the same seed on 212 clips:
#   ARCHS=qwen3_vl SEED=1 TAG=clips-424-2000 AGAINST=small-qwen3_vl-s1-half-pixels-2000 OUT=/tmp/out benchmarks/learning/learning.sh
# With at least one GPU per architecture the experiments run at the same time, each on its own GPU,
# in its own clone of the checkout ($WORK-<arch>) with its share of the CPU cores. Otherwise they
# run one after the other in one clone ($WORK), and the second finds the data stages unchanged and
# reruns from `format` on; PARALLEL=1 runs them at the same time anyway, sharing the GPUs there
# are (each run's timings then count the other's load). Two invocations at once on one machine
# need a WORK each. Nothing else edits a clone's files while it runs. A rerun continues
# from DVC's cache and the train stage's checkpoints in the clone it finds (delete the clone to run
# a newer commit). Results
# (metrics, curves, predictions, logs) go to $OUT/<size>-<arch>/, in the layout
# benchmarks/learning/learning_report.py reads.
# COLLECT=1 with the run's own ARCHS, SEED, TAG, OUT and WORK adds what a run still going (or
# killed) has made so far to its result folder (beside the log, gpu.txt and against.txt the run
# wrote there when it started), in the same layout, without the metrics it has not written yet:
# for the last call of a GPU lease that ends before the run does (the run started in the
# background with setsid; results/README.md, "The centre as a pixel at 2,000 steps"), e.g.
#   COLLECT=1 ARCHS=qwen3_vl TAG=centre-424-2000 OUT=/tmp/out/learn benchmarks/learning/learning.sh
#   cp -r /tmp/out/learn "$OUT/"   # the device tool's return folder
# Its complete prediction columns are then scored against the run it changes by
# benchmarks/learning/stopped_run.py.
# On the device machine of this workplace the project's dependencies come as wheels in
# .whl/project (benchmarks/env/device_project_wheels.txt); elsewhere `pip install -e .` suffices.
set -uo pipefail
ARCHS=${ARCHS:-"qwen2_5_vl qwen3_vl"}
CLIPS=${CLIPS:-424}  # the best measured (above); rl_vs_sft.sh and levers.sh keep 212
source benchmarks/learning/learning_common.sh || exit 1
archs=($ARCHS)
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
parallel=${PARALLEL:-$(( gpus >= ${#archs[@]} && ${#archs[@]} > 1 ))}
if [[ $parallel != [01] ]] || (( parallel && gpus == 0 )); then
  echo "PARALLEL=$parallel: 1 (at once, on the GPUs there are: $gpus) or 0 (one after the other)" >&2; exit 2
fi
if [ -n "${AGAINST:-}" ] && { (( ${#archs[@]} > 1 )) || [[ $AGAINST == */* ]]; }; then
  echo "AGAINST=$AGAINST: the name of one run folder beside the results, for one architecture (ARCHS=...)" >&2; exit 2
fi
cores=$(( $(nproc) / (parallel ? ${#archs[@]} : 1) ))

collect_stopped() {  # collect_stopped <clone> <folder>: what the run in <clone> has made so far, into <folder>
  [ -d "$1/.dvc" ] || { echo "COLLECT=1: no learning run in $1 (WORK names the clone of the run)" >&2; return 1; }
  cd "$1" || return 1
  mkdir -p "$2"
  collect_run "$2"
  local file  # a metrics file the run has not written yet is the commit's, not the run's
  for file in metrics/*.json metrics/timing/*.json; do
    git diff --quiet HEAD -- "$file" 2>/dev/null && rm -f "$2/${file#metrics/}"
  done
  echo "collected the run in $1 into $2 (a stopped run: benchmarks/learning/stopped_run.py scores it)"
}

run_arch() {  # run_arch <arch> <clone>: one experiment in <clone>; results to $OUT/<size>-<arch>
  local arch=$1 result=$OUT/$SIZE-$1$SUFFIX
  if [ "${COLLECT:-0}" = 1 ]; then collect_stopped "$2" "$result"; return; fi
  [ -d "$2" ] || git clone --quiet . "$2" || return 1  # what was sent (committed above)
  cd "$2" || return 1
  mkdir -p "$result"
  if [ -n "${AGAINST:-}" ]; then echo "$AGAINST" > "$result/against.txt"; else rm -f "$result/against.txt"; fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "${CUDA_VISIBLE_DEVICES:-0}" \
    > "$result/gpu.txt" 2>/dev/null
  versions "$result/versions.txt"
  learning_params "$arch" "$cores" || return 1
  local start=$SECONDS name=learning-$SIZE-$arch$SUFFIX
  git checkout --quiet -- params.yaml  # the committed params plus this run's overrides, nothing of a run before
  python3 -m dvc exp remove "$name" >/dev/null 2>&1  # a rerun's name is free again
  python3 -m dvc exp run -n "$name" "${PARAMS[@]}" 2>&1 | stamped > "$result/dvc-exp-run.log"
  local code=${PIPESTATUS[0]}
  echo "dvc exp run exit $code after $((SECONDS - start)) s" >> "$result/dvc-exp-run.log"
  collect_run "$result"
  return "$code"
}

code=0
if (( parallel )); then
  IFS=, read -ra devices <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((gpus - 1)))}"
  for index in "${!archs[@]}"; do
    ( export CUDA_VISIBLE_DEVICES=${devices[$((index % ${#devices[@]}))]}
      run_arch "${archs[$index]}" "$WORK-${archs[$index]}" ) &
  done
  for job in $(jobs -p); do wait "$job" || code=1; done
else
  for arch in "${archs[@]}"; do ( run_arch "$arch" "$WORK" ) || code=1; done
fi
echo "learning benchmark done, exit $code"
exit "$code"
