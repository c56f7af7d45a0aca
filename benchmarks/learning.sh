#!/usr/bin/env bash
# The learning benchmark: a model of the real architecture, initialised at random, trained by this
# repository's own stages on synthetic RDS-HQ clips, evaluated on held-out clips, at every
# checkpoint. One `dvc exp run` of the whole pipeline per architecture, with the parameters below
# (all stage parameters; nothing else changes).
#
# Data: 212 clips x 5 cameras x 2 s; videos rendered at 10 fps (the 30 Hz poses and 10 Hz labels
# are unchanged; extract maps frames by time), every video frame extracted (skip_frames 1): 20
# frames per camera and clip, 20,000 training frames from 200 clips and 1,200 evaluation frames
# from 12 held-out clips. Rendering at 10 fps instead of 30 gives the same 10 Hz frames for a
# third of the rendering time.
#
# Usage, on a GPU machine, from the repository root (a git checkout):
#   ARCH=qwen2_5_vl OUT=/tmp/out benchmarks/learning.sh     # Cosmos Reason 1 architecture
#   ARCH=qwen3_vl   OUT=/tmp/out benchmarks/learning.sh     # Cosmos Reason 2 architecture
# SIZE (small), STEPS (1500) and EXTRA (more -S overrides) change the run.
# It runs in a copy of the checkout (WORK, default /tmp/learning) so that nothing edits the
# experiment's files while it runs; a rerun continues from DVC's cache and the train stage's
# checkpoints. Results (metrics, curves, predictions) are copied to $OUT.
# On the device machine of this workplace the project's dependencies come as wheels in
# .whl/project (benchmarks/device_project_wheels.txt); elsewhere `pip install -e .` suffices.
set -uo pipefail
ARCH=${ARCH:-qwen2_5_vl}
SIZE=${SIZE:-small}
STEPS=${STEPS:-1500}
OUT=$(realpath -m "${OUT:-benchmarks/results/learning}")
WORK=${WORK:-/tmp/learning}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export GIT_AUTHOR_NAME=benchmark GIT_AUTHOR_EMAIL=benchmark@localhost GIT_COMMITTER_NAME=benchmark \
  GIT_COMMITTER_EMAIL=benchmark@localhost
mkdir -p "$OUT"

if [ -d .whl/project ] && ! python3 -c "import dvc, av, dvclive" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/proj .whl/project/*.whl || exit 1
  export PYTHONPATH=/tmp/proj
fi
if ! command -v python >/dev/null; then  # dvc.yaml's commands call `python`
  mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
  export PATH=/tmp/bin:$PATH
fi
if [ ! -d "$WORK" ]; then
  cp -a . "$WORK" && rm -rf "$WORK/.whl"
  (cd "$WORK" && { [ -d .git ] || { git init -q && git add -A && git commit -qm baseline; }; })
fi
cd "$WORK" || exit 1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null

cores=$(nproc)
params=(
  -S synthesize.num_clips=212 -S synthesize.duration_s=2.0 -S synthesize.fps=10 -S "synthesize.workers=$cores"
  -S extract.skip_frames=1 -S "extract.workers=$cores"
  -S format.eval_clips=12 -S format.max_pixels=230400 -S "format.model_family=$ARCH"
  -S "train.model=$SIZE-$ARCH" -S "train.max_steps=$STEPS" -S train.batch_size=32 -S train.save_every=300
  -S train.warmup_ratio=0.05
  -S infer.batch_size=300 -S infer.max_new_tokens=512
  ${EXTRA:-}  # more -S overrides, word-split
)
start=$(date +%s)
python3 -m dvc exp run -n "learning-$SIZE-$ARCH" "${params[@]}" 2>&1 | tee "$OUT/dvc-exp-run.log"
code=${PIPESTATUS[0]}
echo "dvc exp run exit $code after $(( $(date +%s) - start )) s" | tee -a "$OUT/dvc-exp-run.log"
for f in metrics/*.json plots/eval/metrics_vs_steps.json plots/eval/metrics_vs_steps.png; do
  [ -f "$f" ] && cp "$f" "$OUT/$(echo "$f" | tr / _)"
done
tar -czf "$OUT/predictions.tar.gz" data/predictions dvclive/train params.yaml dvc.lock 2>/dev/null
exit "$code"
