#!/usr/bin/env bash
# The published checkpoints at full size through the stages on one GPU (issue 24, item 5):
# a folder laid out as nvidia/Cosmos-Reason1-7B or nvidia/Cosmos-Reason2-8B (models/hub.py: real
# tokenizer and chat template, random bf16 weights at the published shape), then one
# `dvc exp run` of the default pipeline with the recipe's preset and train.model pointing at it.
# Results: benchmarks/hub_checkpoints/results/hub_checkpoints.md.
#
# Usage, on a GPU machine, from the repository root (each step can be its own call; state stays
# under /tmp while the machine does):
#   OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh setup          # wheels, a clone in /tmp/hubrun, the card's matmul rate, the data stages
#     (setup first commits a checkout with changes, as the device machine's needs: benchmarks/env/device_checkout.sh;
#     every other step works in its clone, so run setup once per machine)
#   MODEL=Cosmos-Reason1-7B benchmarks/hub_checkpoints/hub_checkpoints.sh build
#   MODEL=Cosmos-Reason1-7B PRESET=cr1-cosmos-rl TAG=cr1-full OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh run
#   ... LORA=true TAG=cr2-lora ...                            # LoRA, merged into the final folder
#   MODEL=Cosmos-Reason1-7B OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh speed  # infer at batch 1 and 8
#   STEPS=6 OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh cosmos     # the cosmos-rl backend on the 7B folder
#   LORA=true STEPS=6 OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh cosmos  # ... with LoRA: fits an 80 GB H100
#     (full fine-tuning keeps fp32 master weights, gradients and AdamW state: about 132 GB for the 7B)
#   OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh batch         # all of the above, in the order below
#   OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh batch80       # the 8B runs that fit an H100 (LoRA, sweep)
#   MICRO="4 8 16" OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh sweep  # train's rate by micro-batch (item 6)
#   MICRO="2 8" OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh profile   # where train's step time goes (item 6)
#   OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh batchprof     # setup, then the 8B profiles
#   OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh batch200      # the runs that need an H200
#   OUT=/tmp/out benchmarks/hub_checkpoints/hub_checkpoints.sh batchsync     # the host's waits in the 8B step (H100)
# SPEED=0 skips the speed steps of `batch`, CR1=0 its 7B run; TARGET (a stage) stops a run there. STEPS (10), INFER_BATCH (8) and EXTRA (more -S
# overrides, word-split) change a run; WEIGHTS (full) and DEVICE (cuda) the build (WEIGHTS=tiny DEVICE=cpu tries the whole flow on a CPU).
# Disk: a 7B/8B folder is 16.6/17.5 GB in bf16, the trained model 33-35 GB in fp32, so the clone's
# DVC cache hardlinks (no second copy) and a run frees its model from workspace and cache.
# On the device machine of this workplace the dependencies come as wheels in .whl/project
# (benchmarks/env/device_project_wheels.txt: DVC, DVCLive, PyAV, the Qwen vocabulary, trl, ...).
# Tried on one H200 on 2026-12-05 (two calls, no result): the carried wheel folder lacked antlr4
# (listed in device_project_wheels.txt; hydra, which `dvc exp run -S` uses, needs it), the clone ran the session's
# first commit (now benchmarks/env/device_checkout.sh), and then every `dvc exp run` stopped after
# "Reproducing experiment" with "'str' object has no attribute 'read'" (not reproduced on a CPU
# with the same DVC). With hydra-core and omegaconf at the lock's versions (1.3.8, 2.3.1; the list
# had 1.3.2, 2.3.0) and the sent tree committed, a last short call's verbose `dvc exp run` in a
# fresh clone got past that point and started the stages. The canary of `batch` runs verbose to
# show the traceback if it comes back. A third call (CANARY=0 STEPS=6) ran the stages on both
# folders; each run ran out of memory in its second train step (autocast's weight cache, now off):
# results/hub_checkpoints.md. A second call (the fix in) ran the 7B folder through every stage
# (results/second-call/). The device tool empties $OUT at the start of every call, so a batch that
# spans calls writes to a folder of its own (OUT=/tmp/out) and each call copies it to the call's $OUT.
set -uo pipefail
WORK=${WORK:-/tmp/hubrun}
HUB=${HUB:-/tmp/hub}
OUT=$(realpath -m "${OUT:-/tmp/out}")
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export GIT_AUTHOR_NAME=benchmark GIT_AUTHOR_EMAIL=benchmark@localhost GIT_COMMITTER_NAME=benchmark \
  GIT_COMMITTER_EMAIL=benchmark@localhost
[ -d /tmp/proj ] && export PYTHONPATH=/tmp/proj
if ! command -v python >/dev/null; then  # dvc.yaml's commands call `python`
  mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python && chmod +x /tmp/bin/python
  export PATH=/tmp/bin:$PATH
fi
cores=$(nproc)

# A preset's values as -S overrides, for runs that change one of them: a preset named in
# params.yaml replaces the values -S writes there, so such a run names no preset (PRESET=null) and
# spells the preset out, then its own changes (later -S win). save_every stays the run step's 0.
preset_args() {
  PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} python3 -c "
import sys
from av_grounding.params import PRESETS
if sys.argv[1] not in PRESETS:
    sys.exit(f'hub_checkpoints.sh: unknown preset {sys.argv[1]!r}, known: {sorted(PRESETS)}')
for section, values in PRESETS[sys.argv[1]].items():
    for key, value in values.items():
        if key != 'save_every':
            print(f'-S {section}.{key}=' + ('null' if value is None else str(value).lower() if isinstance(value, bool) else str(value)))
" "$1"
}

case "${1:-}" in
  setup)
    if [ -d .whl/project ] && ! python3 -c "import dvc, av, dvclive, trl" 2>/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/proj .whl/project/*.whl || exit 1
      export PYTHONPATH=/tmp/proj
    fi
    source benchmarks/env/device_checkout.sh || exit 1  # what was sent, committed
    rm -rf "$WORK" && git clone --quiet . "$WORK" || exit 1
    git -C "$WORK" log --oneline -1
    cd "$WORK" || exit 1; export PYTHONPATH=src:${PYTHONPATH:-}
    python3 -m dvc config --local cache.type hardlink
    # The card's dense bf16 matrix-product rate, the denominator of the report's measured MFU
    mkdir -p "$OUT" && PYTHONPATH=benchmarks/train_throughput:$PYTHONPATH python3 -c "
import json, sys, torch
from train_throughput import matmul_peak
cuda = torch.cuda.is_available()  # a CPU dry run times fp32 products
json.dump({'device': torch.cuda.get_device_name() if cuda else 'cpu', 'torch': torch.__version__,
           'bf16_matmul_tflops': round((matmul_peak('cuda') if cuda else matmul_peak('cpu', 512)) / 1e12, 3)},
          open(sys.argv[1], 'w'))" "$OUT/matmul_peak.json"
    cat "$OUT/matmul_peak.json"; echo
    # The data stages once (they do not depend on the model); every run below reuses them.
    time python3 -m dvc repro validate
    ;;
  build)
    cd "$WORK" || exit 1; export PYTHONPATH=src:${PYTHONPATH:-}  # the clone: the checkout may be replaced meanwhile
    mkdir -p "$HUB"
    time python3 -m av_grounding.models.hub "${MODEL:?}" "$HUB/$MODEL" --weights "${WEIGHTS:-full}" \
      --device "${DEVICE:-cuda}" --replace
    du -sh "$HUB/$MODEL"; ls "$HUB/$MODEL"
    ;;
  run)
    cd "$WORK" || exit 1; export PYTHONPATH=src:${PYTHONPATH:-}
    result=$OUT/${TAG:?}
    mkdir -p "$result/metrics"
    git checkout -- params.yaml  # each run from the committed params plus its own -S
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$result/gpu.txt"
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
      >> "$result/gpu.txt"
    params=(
      -S "preset=${PRESET:?}" -S "train.model=$HUB/${MODEL:?}" -S "train.max_steps=${STEPS:-10}"
      -S train.save_every=0 -S "train.lora=${LORA:-false}" -S train.loader_workers=8
      -S rl.steps=0 -S infer.zero_shot=false -S infer.checkpoints=none -S infer.max_new_tokens=64
      -S "infer.batch_size=${INFER_BATCH:-8}" -S evaluate.overlays=0
      ${EXTRA:-}
    )
    start=$SECONDS
    python3 -m dvc exp run ${VERBOSE:+-v} -n "$TAG" "${params[@]}" ${TARGET:-} > "$result/dvc-exp-run.log" 2>&1
    code=$?
    echo "dvc exp run exit $code after $((SECONDS - start)) s" >> "$result/dvc-exp-run.log"
    # only the metrics this run wrote: a stage that failed leaves the committed (CPU) files in place
    cp params.yaml "$result/"
    (cd metrics && find . -name '*.json' -newer "$result/gpu.txt" -exec cp --parents {} "$result/metrics/" \;) \
      2>/dev/null || true
    mkdir -p "$result/curves"  # likewise: the committed curves stay when train fails before DVCLive opens
    find dvclive/train/plots/metrics/train -name '*.tsv' -newer "$result/gpu.txt" -exec cp {} "$result/curves/" \; \
      2>/dev/null || true
    ls -la data/train/model > "$result/final_model_files.txt" 2>&1
    cp data/train/cosmos-rl/cosmos-rl.log data/train/cosmos-rl/run.toml "$result/" 2>/dev/null
    tail -5 "$result/dvc-exp-run.log"
    # 33-35 GB in fp32: room for the next run (the model's files leave the DVC cache too)
    python3 - <<'PY'
import json, pathlib, yaml
lock = yaml.safe_load(open("dvc.lock"))
cache = pathlib.Path(".dvc/cache/files/md5")
freed = 0
for out in lock["stages"].get("train", {}).get("outs", []):
    manifest = cache / out["md5"][:2] / out["md5"][2:]
    if out["path"] == "data/train" and out["md5"].endswith(".dir") and manifest.exists():
        for entry in json.loads(manifest.read_text()):
            file = cache / entry["md5"][:2] / entry["md5"][2:]
            if entry["relpath"].startswith(("model/", "checkpoints/")) and file.exists():
                freed += file.stat().st_size
                file.unlink()
print(f"freed {freed / 2**30:.1f} GiB of the DVC cache")
PY
    rm -rf data/train/model data/train/checkpoints
    df -h . | tail -1
    exit "$code"
    ;;
  speed)  # infer's generation at batch 1 and 8 on the published-shape folder, on the frames the last run formatted
    # (random weights: every answer runs to the 64-token cap, so images/s is a floor for real answers)
    cd "$WORK" || exit 1; export PYTHONPATH=src:${PYTHONPATH:-}
    python3 benchmarks/infer_throughput/infer_throughput.py --model "$HUB/${MODEL:?}" --dataset data/dataset \
      --frames 16 --batch-sizes 1,8 --max-new-tokens 64 --decodings dynamic --out "$OUT/infer-$MODEL.json"
    ;;
  cosmos)  # the cosmos-rl backend on the 7B folder, in its own environment (.whl/cosmos and .whl/cosmos-boto: the two together
    # pass the carry limit, so .whl/cosmos-boto comes with setup's .whl/project and .whl/cosmos in this call); needs setup's clone
    source benchmarks/env/cosmos_rl_env.sh
    [ -n "$COSMOS_RL" ] || { echo "$COSMOS_RL_MISSING"; exit 1; }
    self=$(realpath "$0")
    [ -d "$HUB/Cosmos-Reason1-7B" ] || MODEL=Cosmos-Reason1-7B "$self" build || exit 1
    # cosmos-rl writes a resumable checkpoint (weights and AdamW state, about 100 GB for the 7B) at
    # the last step whatever save_freq says; its log keeps the step times if the disk runs out.
    MODEL=Cosmos-Reason1-7B PRESET=cr1-cosmos-rl TAG=cr1-cosmos-rl$([ "${LORA:-false}" = true ] && echo -lora) \
      EXTRA="-S train.backend=cosmos-rl \
      -S train.cosmos_rl_executable=$COSMOS_RL ${EXTRA:-}" "$self" run
    ;;
  batch)  # every run of item 5, the most wanted first; one folder on disk at a time
    self=$(realpath "$0")
    "$self" setup || { echo "batch failed: setup"; exit 1; }
    # A canary first: the whole flow with tiny weights (a minute), verbose, so a broken environment
    # shows its traceback before the full-size runs spend the GPU time (CANARY=0 skips it).
    if [ "${CANARY:-1}" != 0 ]; then
      HUB=/tmp/canary MODEL=Cosmos-Reason1-7B WEIGHTS=tiny "$self" build \
        && HUB=/tmp/canary MODEL=Cosmos-Reason1-7B PRESET=cr1-cosmos-rl TAG=canary STEPS=1 VERBOSE=1 "$self" run \
        || { echo "batch failed: canary"; exit 1; }
    fi
    rm -rf /tmp/canary
    # Both architectures through the stages first (item 5), then item 6 on the 8B folder at the
    # recipe's learning rate of 2e-7 (the one bf16 weights would lose), then LoRA.
    if [ "${CR1:-1}" != 0 ]; then  # CR1=0: the 7B run is already measured (results/second-call/)
      MODEL=Cosmos-Reason1-7B "$self" build || { echo "batch failed: build"; exit 1; }
      MODEL=Cosmos-Reason1-7B PRESET=cr1-cosmos-rl TAG=cr1-full "$self" run
      [ "${SPEED:-1}" != 0 ] && MODEL=Cosmos-Reason1-7B "$self" speed
      rm -rf "$HUB/Cosmos-Reason1-7B"
    fi
    MODEL=Cosmos-Reason2-8B "$self" build || { echo "batch failed: build"; exit 1; }
    MODEL=Cosmos-Reason2-8B PRESET=cr2-qwen-finetune TAG=cr2-full "$self" run
    [ "${SPEED:-1}" != 0 ] && MODEL=Cosmos-Reason2-8B "$self" speed
    # item 6: the same run with bf16 weights and stochastically rounded updates, no checkpointing,
    # Liger (cr2-qwen-finetune spelled out: preset_args).
    MODEL=Cosmos-Reason2-8B PRESET=null TAG=cr2-bf16sr EXTRA="$(preset_args cr2-qwen-finetune) \
      -S train.gradient_checkpointing=false -S train.precision=bf16_stochastic -S train.fused_kernels=liger" \
      "$self" run
    MODEL=Cosmos-Reason2-8B PRESET=cr2-cosmos-rl TAG=cr2-lora LORA=true "$self" run  # the preset's lr, 2e-7
    echo "batch done"
    ;;
  batch80)  # the 8B runs that fit an 80 GB H100 (full fine-tuning in fp32 needs 134 GiB), train only:
    # LoRA (its peak with the in-place merge), then the micro-batch sweep of bf16 weights with
    # stochastically rounded updates at lr 2e-7 and checkpointing. (Its first version, at f67281f,
    # ran the bf16 run at 2 x 8 through every stage, then LoRA: results/h100-calls/second/.)
    self=$(realpath "$0")
    "$self" setup || { echo "batch failed: setup"; exit 1; }
    MODEL=Cosmos-Reason2-8B "$self" build || { echo "batch failed: build"; exit 1; }
    MODEL=Cosmos-Reason2-8B PRESET=cr2-cosmos-rl TAG=cr2-lora LORA=true TARGET=train "$self" run
    MODEL=Cosmos-Reason2-8B PRESET=cr2-qwen-finetune MICRO="${MICRO:-2 4 8}" \
      EXTRA="-S train.precision=bf16_stochastic -S train.fused_kernels=liger" "$self" sweep
    echo "batch done"
    ;;
  sweep)  # item 6: the train stage's rate against the micro-batch, at the preset's samples a step
    # (MODEL, default the 7B folder; PRESET, default cr1-cosmos-rl: 32 samples a step; MICRO: the
    # micro-batches, default 4 8 16; NAME: a suffix of the run folders). Train only (`dvc exp run
    # train`); needs setup's clone.
    self=$(realpath "$0")
    model=${MODEL:-Cosmos-Reason1-7B} preset=${PRESET:-cr1-cosmos-rl}
    preset_args "$preset" > /dev/null || exit 2
    [ -d "$HUB/$model" ] || MODEL=$model "$self" build || exit 1
    per_step=$(PYTHONPATH=src python3 -c "from av_grounding.params import PRESETS as P; t = P['$preset']['train']; print(t['batch_size'] * t['grad_accum'])")
    for micro in ${MICRO:-4 8 16}; do
      [ $((per_step % micro)) = 0 ] || { echo "sweep: $micro does not divide $per_step samples a step"; exit 2; }
      MODEL=$model PRESET=null TAG=sweep-$preset-mb$micro${NAME:+-$NAME} TARGET=train STEPS=${STEPS:-5} \
        EXTRA="$(preset_args "$preset") -S train.batch_size=$micro -S train.grad_accum=$((per_step / micro)) ${EXTRA:-}" \
        "$self" run
    done
    ;;
  profile)  # item 6: where the train stage's step time goes (profile_train.py), by micro-batch, at
    # the preset's samples a step (MODEL, default the 8B folder; PRESET, default cr2-qwen-finetune;
    # MICRO, default "2 8"; EXTRA: more -S for dvc and the profile, e.g. the precision; ARGS: more
    # profile_train.py options; NAME: a suffix of the result files). Formats with the run's params
    # first (`dvc exp run format`, FORMAT=0 skips it); needs setup's clone.
    self=$(realpath "$0")
    model=${MODEL:-Cosmos-Reason2-8B} preset=${PRESET:-cr2-qwen-finetune}
    preset_args "$preset" > /dev/null || exit 2
    [ -d "$HUB/$model" ] || MODEL=$model "$self" build || exit 1
    if [ "${FORMAT:-1}" != 0 ]; then
      MODEL=$model PRESET=null TAG=profile-format-$preset TARGET=format EXTRA="$(preset_args "$preset") ${EXTRA:-}" \
        "$self" run || exit 1
    fi
    cd "$WORK" || exit 1; export PYTHONPATH=src:benchmarks:${PYTHONPATH:-}
    per_step=$(python3 -c "import yaml; t = yaml.safe_load(open('params.yaml'))['train']; print(t['batch_size'] * t['grad_accum'])")
    for micro in ${MICRO:-2 8}; do
      [ $((per_step % micro)) = 0 ] || { echo "profile: $micro does not divide $per_step samples a step"; exit 2; }
      name=profile-$model-$preset-mb$micro${NAME:+-$NAME}
      python3 benchmarks/hub_checkpoints/profile_train.py -S train.batch_size=$micro \
        -S train.grad_accum=$((per_step / micro)) ${ARGS:-} --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1
      echo "$name exit $?"; tail -3 "$OUT/$name.log"
    done
    ;;
  batchprof)  # item 6 on an H100: the 8B folder in bf16 with stochastic rounding and checkpointing
    # (cr2-qwen-finetune): the step with the compiled update and lengths padded to 64 (the
    # defaults), then without each, then by micro-batch
    self=$(realpath "$0")
    "$self" setup || { echo "batch failed: setup"; exit 1; }
    MODEL=Cosmos-Reason2-8B "$self" build || { echo "batch failed: build"; exit 1; }
    export MODEL=Cosmos-Reason2-8B EXTRA="-S train.precision=bf16_stochastic -S train.fused_kernels=liger"
    MICRO=8 ARGS=--check-update "$self" profile
    FORMAT=0 MICRO=8 ARGS="-S train.pad_to_multiple_of=1" NAME=unpadded "$self" profile
    FORMAT=0 MICRO=8 ARGS=--plain-update NAME=plain-update "$self" profile
    FORMAT=0 MICRO="2 16" "$self" profile
    echo "batch done"
    ;;
  batchsync)  # item 6 on an H100: what the host still waits for in the 8B step at 16 x 1 (bf16 with
    # stochastic rounding, checkpointing, Liger): the profile as the stage runs it (positions and
    # vision inputs on the host; with the compiled update checked against the plain one), with
    # Python stacks naming each host read's source, and with 6 of the 36 decoder layers unchecked;
    # then the train stage itself at 16 x 1 (profile_train.py --device-positions compares with the
    # positions computed in the forward, as transformers does); STACKS=0 skips the stacks
    # profile, STAGE=0 the train stage
    self=$(realpath "$0")
    "$self" setup || { echo "batch failed: setup"; exit 1; }
    MODEL=Cosmos-Reason2-8B "$self" build || { echo "batch failed: build"; exit 1; }
    export MODEL=Cosmos-Reason2-8B EXTRA="-S train.precision=bf16_stochastic -S train.fused_kernels=liger"
    MICRO=16 ARGS=--check-update "$self" profile
    [ "${STACKS:-1}" = 1 ] && FORMAT=0 MICRO=16 ARGS=--stacks NAME=stacks "$self" profile
    FORMAT=0 MICRO=16 ARGS="-S train.checkpoint_fraction=0.85" NAME=ckpt85 "$self" profile
    [ "${STAGE:-1}" = 1 ] && PRESET=null TAG=cr2-bf16sr-mb16 TARGET=train STEPS=6 \
      EXTRA="$(preset_args cr2-qwen-finetune) $EXTRA -S train.batch_size=16 -S train.grad_accum=1" "$self" run
    echo "batch done"
    ;;
  batch200)  # what needs an H200 (141 GB; call with needs_h200): item 5's 8B full fine-tuning in fp32
    # through every stage, then item 6 at the preset's samples a step in one micro-batch with the
    # fixes of the profiles (compiled update, lengths padded to 64, positions on the host): the 8B
    # and 7B folders in bf16 with stochastic rounding without checkpointing (its recomputation
    # was 23 % of the model FLOPs on the H100), the 7B also in fp32 with checkpointing, train only
    self=$(realpath "$0")
    "$self" setup || { echo "batch failed: setup"; exit 1; }
    MODEL=Cosmos-Reason2-8B "$self" build || { echo "batch failed: build"; exit 1; }
    MODEL=Cosmos-Reason2-8B PRESET=cr2-qwen-finetune TAG=cr2-full "$self" run
    fast="-S train.precision=bf16_stochastic -S train.fused_kernels=liger -S train.gradient_checkpointing=false"
    MODEL=Cosmos-Reason2-8B PRESET=cr2-qwen-finetune MICRO=16 NAME=bf16sr EXTRA="$fast" "$self" sweep
    MODEL=Cosmos-Reason2-8B MICRO=16 NAME=stacks-no-ckpt ARGS=--stacks EXTRA="$fast" "$self" profile  # host waits
    rm -rf "$HUB/Cosmos-Reason2-8B"
    MODEL=Cosmos-Reason1-7B "$self" build || { echo "batch failed: build"; exit 1; }
    MODEL=Cosmos-Reason1-7B PRESET=cr1-cosmos-rl MICRO=32 NAME=bf16sr EXTRA="$fast" "$self" sweep
    MODEL=Cosmos-Reason1-7B PRESET=cr1-cosmos-rl MICRO=16 NAME=fp32 EXTRA="-S train.fused_kernels=liger" "$self" sweep  # 32 would pass 141 GB
    echo "batch done"
    ;;
  *) echo "usage: $0 setup|build|run|speed|cosmos|batch|batch80|sweep|profile|batchprof|batchsync|batch200" >&2
     exit 2 ;;
esac
