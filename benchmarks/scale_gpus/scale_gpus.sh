#!/usr/bin/env bash
# Training on two GPUs of one host against one, through the `train` stage, same data, model, seed
# and global batch (32 samples a step), the throughput optimisations on (packed vision attention,
# Liger kernels, no gradient checkpointing):
#   one-gpu           1 process,  batch 16 x grad_accum 2 (the same samples and loss per step as 2 x 16)
#   ddp-2gpu          train.gpus 2 (the stage starts 2 processes under torchrun) x batch 16, data parallel
#   zero3-2gpu        train.gpus 2 x batch 16, DeepSpeed ZeRO-3
#   one-gpu-b32       1 process,  batch 32 (the learning benchmark's setting)
#   cosmos-rl-1gpu    backend cosmos-rl, 1 GPU, batch 32             (when .whl/cosmos/ is here)
#   cosmos-rl-2gpu    backend cosmos-rl, dp_shard_size 2, 2 x batch 16
# then the Qwen2.5-VL-3B shape (random init, benchmarks/tools/shape_model.py), batch 4 a step:
#   3b-one-gpu        1 process,  batch 4
#   3b-zero3-2gpu     train.gpus 2 x batch 2, DeepSpeed ZeRO-3
# Data: 42 synthetic clips x 5 cameras x 2 s at 10 fps, every frame (4,000 training frames from 40
# clips), built by the stage scripts with the parameters written to $WORK/params.yaml.
# Results (per run: metrics JSON, stage log, loss and samples/s curves) go to $OUT;
# benchmarks/scale_gpus/scale_report.py turns them into benchmarks/scale_gpus/results/scale_gpus.md.
#
# Usage, on a machine with 2 GPUs, from the repository root (.whl/project/ and, for the cosmos-rl
# runs, .whl/cosmos/ as benchmarks/env/*wheels.txt say; elsewhere `pip install -e .[gpu]`):
#   OUT=/tmp/out benchmarks/scale_gpus/scale_gpus.sh
# (about 15 minutes on 2 x H200: through the device tool, start it in the background with setsid
# and read $OUT from later calls). Every run starts from scratch; the data is built once in $WORK.
# STEPS (300), STEPS_3B (30), MODEL (small-qwen2_5_vl), CLIPS (42) and RUNS (a space-separated subset of the
# names above) change it. On a machine without GPUs, DEVICE=cpu MODEL=tiny-qwen2_5_vl runs the
# same plumbing (gloo instead of NCCL; no DeepSpeed, cosmos-rl or 3B runs).
set -uo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
OUT=$(realpath -m "${OUT:-benchmarks/scale_gpus/results}")
WORK=$(realpath -m "${WORK:-/tmp/scale}")
STEPS=${STEPS:-300}
STEPS_3B=${STEPS_3B:-30}
CLIPS=${CLIPS:-42}
MODEL=${MODEL:-small-qwen2_5_vl}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-"one-gpu ddp-2gpu zero3-2gpu one-gpu-b32 cosmos-rl-1gpu cosmos-rl-2gpu 3b-one-gpu 3b-zero3-2gpu"}
PARAMS=$WORK/params.yaml
DATA=$WORK/data
mkdir -p "$OUT" "$WORK"

if [ -d .whl/project ] && ! python3 -c "import dvclive, av" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/proj .whl/project/*.whl || exit 1
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/proj ] && export PYTHONPATH=$PYTHONPATH:/tmp/proj
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  > "$OUT/versions.txt"

wanted() { [[ " $RUNS " == *" $1 "* ]]; }

make_data() {  # the stage scripts on this machine's cores, once
  [ -f "$DATA/dataset/split.json" ] && return 0
  local cores
  cores=$(nproc)
  python3 - "$PARAMS" "$cores" "$DATA" "$MODEL" "$CLIPS" <<'PY' || return 1
import sys
import yaml
from av_grounding.models.builtin import BUILTIN_MODELS, split_name
path, cores, data, model = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
params = yaml.safe_load(open("params.yaml"))
params["synthesize"].update(num_clips=int(sys.argv[5]), duration_s=2.0, fps=10, workers=cores)
params["extract"].update(input_root=f"{data}/synthetic", skip_frames=1, workers=cores)
params["transform"]["workers"] = params["filter"]["workers"] = cores
family = split_name(model)[1] if model in BUILTIN_MODELS else "qwen2_5_vl"
params["format"].update(eval_clips=2, max_pixels=230400, model_family=family)
yaml.safe_dump(params, open(path, "w"), sort_keys=False)
PY
  local stage
  for stage in "synthesize --output $DATA/synthetic --metrics $WORK/synthesize.json" \
               "extract --output $DATA/extracted --metrics $WORK/extract.json --rate $WORK/extract_rate.json" \
               "transform --input $DATA/extracted --output $DATA/transformed" \
               "filter --input $DATA/transformed --output $DATA/filtered --metrics $WORK/curation.json" \
               "format --input $DATA/filtered --images $DATA/extracted --output $DATA/dataset \
                --metrics $WORK/dataset.json --plots $WORK/plots-dataset"; do
    set -- $stage
    python3 "stages/$1.py" --params "$PARAMS" "${@:2}" > "$OUT/data-$1.log" 2>&1 \
      || { echo "data stage $1 failed: $OUT/data-$1.log"; return 1; }
  done
  cp "$WORK/dataset.json" "$OUT/dataset.json"
}

status=0
train_run() {  # train_run <name> <launcher and stage args...>: one run of the train stage, from scratch
  local name=$1 start=$SECONDS code
  shift
  wanted "$name" || return 0
  rm -rf "$WORK/$name" "$WORK/live-$name" "$OUT/$name.json" "$OUT/$name"-*.tsv "$OUT/$name-timing.json"  # no earlier run's numbers
  timeout 900 "$@" --params "$PARAMS" --dataset "$DATA/dataset" --output "$WORK/$name" --metrics "$OUT/$name.json" \
    --live "$WORK/live-$name" --timing "$OUT/$name-timing.json" --save-every 0 > "$OUT/$name.log" 2>&1
  code=$?
  [ "$code" = 0 ] || status=1
  echo "$name exit $code after $((SECONDS - start)) s" | tee -a "$OUT/runs.txt"
  cp "$WORK/live-$name/plots/metrics/train/loss.tsv" "$OUT/$name-loss.tsv" 2>/dev/null
  [ -f "$OUT/$name-timing.json" ] && python3 benchmarks/tools/timing_curve.py "$OUT/$name-timing.json" samples_per_s \
    > "$OUT/$name-samples_per_s.tsv"
}

make_data || exit 1
fast=(--fused-kernels liger --vision-attention packed --gradient-checkpointing false)
[ "$DEVICE" = cpu ] && fast=(--vision-attention packed)
small=(stages/train.py --model "$MODEL" --max-steps "$STEPS" "${fast[@]}")
zero3=(--deepspeed configs/deepspeed_zero3.json)

CUDA_VISIBLE_DEVICES=0 train_run one-gpu python3 "${small[@]}" --batch-size 16 --grad-accum 2
train_run ddp-2gpu python3 "${small[@]}" --gpus 2 --batch-size 16
[ "$DEVICE" = cpu ] || train_run zero3-2gpu python3 "${small[@]}" --gpus 2 --batch-size 16 "${zero3[@]}"
CUDA_VISIBLE_DEVICES=0 train_run one-gpu-b32 python3 "${small[@]}" --batch-size 32
source benchmarks/env/cosmos_rl_env.sh  # here, not at the start: its wheels may arrive while the runs above train
if [ -n "$COSMOS_RL" ]; then
  cosmos=(--backend cosmos-rl --cosmos-rl-executable "$COSMOS_RL")
  CUDA_VISIBLE_DEVICES=0 train_run cosmos-rl-1gpu python3 "${small[@]}" "${cosmos[@]}" --gpus 1 --batch-size 32
  train_run cosmos-rl-2gpu python3 "${small[@]}" "${cosmos[@]}" --gpus 2 --batch-size 16
fi
if [ "$DEVICE" != cpu ] && { wanted 3b-one-gpu || wanted 3b-zero3-2gpu; }; then
  if ls "$WORK"/m3b/model*.safetensors* >/dev/null 2>&1 \
     || python3 benchmarks/tools/shape_model.py 3b "$WORK/m3b" > "$OUT/model-3b.log" 2>&1; then
    large=(stages/train.py --model "$WORK/m3b" --max-steps "$STEPS_3B" "${fast[@]}" --lr 0.00001)
    CUDA_VISIBLE_DEVICES=0 train_run 3b-one-gpu python3 "${large[@]}" --batch-size 4
    train_run 3b-zero3-2gpu python3 "${large[@]}" --gpus 2 --batch-size 2 "${zero3[@]}"
  else
    echo "3B model build failed: $OUT/model-3b.log" | tee -a "$OUT/runs.txt"
    status=1
  fi
fi
echo "scale benchmark done, exit $status"
exit "$status"
