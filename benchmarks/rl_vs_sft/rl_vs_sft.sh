#!/usr/bin/env bash
# Reinforcement learning against more supervised fine-tuning at equal GPU time (issue 27, item 5).
#
# From the learning benchmark's SFT model (benchmarks/learning/learning.sh: same data, model and
# parameters, EXTRA included), two arms on the same held-out frames:
#   sft: MORE (1000) further SFT steps from the SFT model (`train.model` = its folder; `train.lr`
#        SFT_LR, default 1e-4: a second cosine cycle at a third of the small model's peak);
#   rl:  GRPO (the `rl` stage) from the same model for the GPU time that the MORE SFT steps take
#        (32 frames x 8 answers of up to 512 tokens a step, lr RL_LR constant (default SFT_LR: the
#        same step size as the SFT arm's peak; at 1e-5 four GPU steps moved the policy to a KL of
#        6e-4 only, results/README.md), KL 0.04: RL_PARAMS).
# Equal time: the SFT steps' time is planned as MORE times the mean step time of the SFT model's
# own training (same model, batch and data, alone on the GPU; its first step, with the warm-up,
# left out), and GRPO ends at the step boundary nearest that budget of its steps' own time
# (`rl.time_budget_s`: generation, loss and update, whatever length the answers grow to). The report
# sets the arms' measured step times side by side (timing/*.json of each arm) and flags a
# difference of more than 10 %. GRPO's first step, with its start-up (36 s of 83 in four steps on
# an H100), counts in its budget, while the plan leaves SFT's first step out: what is left of the
# difference favours SFT.
#
# Usage, on a GPU machine, from the repository root (one architecture and seed per call):
#   ARCH=qwen3_vl SEED=0 OUT=/tmp/out benchmarks/rl_vs_sft/rl_vs_sft.sh
# SIZE, STEPS, SEED, CLIPS, TAG, EXTRA, WORK as in learning.sh, but CLIPS defaults to 212 here, the data of
# the committed comparison (a learning run of the same settings and
# architecture in the same clone, $WORK, is reused, not retrained: learning.sh uses $WORK when it
# runs one architecture); RL_EXTRA (more -S overrides of the rl section, word-split) and SFT_EXTRA
# (of the SFT arm) change the arms. Every run starts from the committed params.yaml. Results go to
# $OUT/<size>-<arch>[-s<seed>][-<tag>]/:
#   base/ sft/ rl/    each arm's metrics, params, dvc.lock, curves, timing, predictions and the
#                     evaluation split's truth (learning_common.sh's collect_run; the report
#                     scores the arms on base's, paired); base is the SFT model alone
#                     (an arm whose run fails keeps only its log and failed.txt: the exit
#                     code and the first traceback's exception line)
#   plan.json         the equal-time plan: SFT step time, the GRPO time budget
#   command.txt       this command (the settings given, without OUT and WORK) and the tree it ran
#   gpu.txt, versions.txt  the card; Python and the packages the numbers depend on
# then: python benchmarks/rl_vs_sft/rl_vs_sft_report.py $OUT --out benchmarks/rl_vs_sft/results/rl.md
#
# Order matters: the train stage keeps one model (its outputs persist and are not restored from
# DVC's run cache), so the rl arm, which needs the SFT model, comes before the SFT arm.
set -uo pipefail
# the command as called (the settings the caller gave, not OUT or WORK, which are paths), written
# to the run folder with the tree it ran, before the defaults below fill the rest
given() {
  local name line=""
  for name in ARCH SEED SIZE STEPS CLIPS TAG EXTRA MORE SFT_LR RL_LR RL_MAX_STEPS RL_EXTRA SFT_EXTRA; do
    [ -n "${!name:-}" ] && line+="$name=$(printf %q "${!name}") "
  done
  echo "${line}benchmarks/rl_vs_sft/rl_vs_sft.sh"
}
COMMAND=$(given)
ARCH=${ARCH:-qwen3_vl}
MORE=${MORE:-1000}
RL_MAX_STEPS=${RL_MAX_STEPS:-10000}  # an upper bound: the time budget ends the run
SFT_LR=${SFT_LR:-1e-4}
RL_LR=${RL_LR:-$SFT_LR}
RL_PARAMS=(-S rl.prompts_per_step=32 -S rl.group_size=8 -S rl.max_answer_tokens=512 -S rl.lr=$RL_LR -S rl.kl=0.04
           -S rl.save_every=0 ${RL_EXTRA:-})
RL_STAGE=1 source benchmarks/learning/learning_common.sh || exit 1  # its rl stage runs TRL's GRPOTrainer
result=$OUT/$SIZE-$ARCH$SUFFIX
mkdir -p "$result"
[ -d "$WORK" ] || git clone --quiet . "$WORK" || exit 1
cd "$WORK" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$result/gpu.txt" 2>/dev/null
versions "$result/versions.txt"
printf "%s\ntree %s\n" "$COMMAND" "$(git rev-parse --short=7 HEAD)" > "$result/command.txt"
learning_params "$ARCH" "$(nproc)" || exit 1
BASE=("${PARAMS[@]}" -S infer.checkpoints=none)
base_model=$WORK.sft-model

experiment() {  # experiment <name> <folder> <dvc exp run arguments...>: one run, logged, collected
  local name=rlvs-$1-$SIZE-$ARCH$SUFFIX folder=$2 start=$SECONDS
  shift 2
  rm -rf "$folder" && mkdir -p "$folder"  # nothing of an earlier invocation into the same OUT
  echo "$(date +%T) $name: dvc exp run $*" >&2
  git checkout --quiet -- params.yaml  # every run from the committed params plus its own overrides
  python3 -m dvc exp remove "$name" >/dev/null 2>&1  # a rerun's name is free again
  python3 -m dvc exp run -n "$name" "$@" 2>&1 | stamped > "$folder/dvc-exp-run.log"
  local code=${PIPESTATUS[0]}
  echo "dvc exp run exit $code after $((SECONDS - start)) s" >> "$folder/dvc-exp-run.log"
  if (( code == 0 )); then collect_run "$folder"; return 0; fi
  # a failed arm keeps its log and the reason only: the clone's metrics are another arm's
  { echo "dvc exp run exit $code"; first_exception "$folder/dvc-exp-run.log"; } > "$folder/failed.txt"
  echo "$name failed (exit $code): $folder/dvc-exp-run.log" >&2; tail -20 "$folder/dvc-exp-run.log" >&2
  return "$code"
}

first_exception() {  # first_exception <log>: the exception line that ends its first traceback (the
  # cause; later ones are often the interpreter's shutdown), else its last line naming an error
  awk '/Traceback \(most recent call last\)/ { inside = 1 }
       inside && /^[0-9:]* *[A-Za-z_.]*(Error|Exception|Interrupt)(:|$)/ { print; found = 1; exit }
       /Error|ERROR/ { last = $0 } END { if (!found && last != "") print last }' "$1"
}

mean_step() {  # mean_step <timing.json>: the mean seconds of the steps it lists, the first left out
  python3 -c "import json, sys; s = json.load(open(sys.argv[1]))['per_step']['seconds'][1:]; print(sum(s) / len(s))" "$1"
}

rm -rf "$result/plan.json"
experiment base "$result/base" "${BASE[@]}" || exit 1
rm -rf "$base_model" && cp -r data/train/model "$base_model" || exit 1

sft_step=$(mean_step "$result/base/timing/train.json") || exit 1
budget=$(python3 -c "print(round($MORE * $sft_step, 2))")
printf '{"more_sft_steps": %s, "sft_step_s": %s, "rl_time_budget_s": %s, "rl_max_steps": %s, "sft_lr": "%s", "rl_lr": "%s"}\n' \
  "$MORE" "$sft_step" "$budget" "$RL_MAX_STEPS" "$SFT_LR" "$RL_LR" > "$result/plan.json"
echo "$(date +%T) plan: $(cat "$result/plan.json")" >&2

code=0
experiment rl "$result/rl" "${BASE[@]}" "${RL_PARAMS[@]}" -S "rl.steps=$RL_MAX_STEPS" -S "rl.time_budget_s=$budget" \
  || code=1
experiment sft "$result/sft" "${BASE[@]}" -S "train.model=$base_model" -S "train.max_steps=$MORE" -S train.save_every=0 \
  -S "train.lr=$SFT_LR" ${SFT_EXTRA:-} || code=1
echo "rl against sft done, exit $code"
exit "$code"
