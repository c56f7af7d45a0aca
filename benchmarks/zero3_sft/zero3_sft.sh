#!/usr/bin/env bash
# The hf backend with DeepSpeed ZeRO-3 (configs/deepspeed_zero3.json) over 2 GPUs of one host,
# through the `train` stage under torchrun:
#   1. tiny-qwen2_5_vl, 20 steps with a checkpoint at 10, then `infer` on the gathered model;
#   2. a random-init Qwen2.5-VL-3B shape (3.75B parameters, benchmarks/tools/shape_model.py), 6 steps,
#      gradient checkpointing, against the same steps on one GPU without ZeRO: peak memory per GPU.
# Needs .whl/project/ (benchmarks/env/device_project_wheels.txt, with deepspeed built by
# `pip wheel --no-deps --no-build-isolation deepspeed`) and data/dataset. Usage (device machine):
#   OUT=<folder> benchmarks/zero3_sft/zero3_sft.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src:/tmp/proj
OUT=${OUT:-benchmarks/zero3_sft/results}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/proj .whl/project/*.whl 2>/dev/null || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
run() { local name=$1; shift; timeout 400 "$@" > "$OUT/$name.log" 2>&1; echo "$name exit $?"; }

run zero3-tiny-train torchrun --standalone --nproc_per_node 2 stages/train.py --dataset data/dataset \
  --output /tmp/z3-tiny --metrics "$OUT/zero3-tiny-train.json" --live /tmp/z3-tiny-live \
  --deepspeed configs/deepspeed_zero3.json --max-steps 20 --save-every 10 --lr 0.002
run zero3-tiny-infer python3 stages/infer.py --dataset data/dataset --train /tmp/z3-tiny --output /tmp/z3-tiny-pred \
  --metrics "$OUT/zero3-tiny-infer.json" --checkpoints all --zero-shot false
cp /tmp/z3-tiny-live/plots/metrics/train/loss.tsv "$OUT/zero3-tiny-loss.tsv" 2>/dev/null

python3 benchmarks/tools/shape_model.py 3b /tmp/m3b > "$OUT/model-3b.log" 2>&1
common="--dataset data/dataset --model /tmp/m3b --max-steps 6 --save-every 0 --batch-size 2 --gradient-checkpointing true"
run zero3-3b-train torchrun --standalone --nproc_per_node 2 stages/train.py $common --output /tmp/z3-3b \
  --metrics "$OUT/zero3-3b-train.json" --live /tmp/z3-3b-live --deepspeed configs/deepspeed_zero3.json
run single-3b-train python3 stages/train.py $common --output /tmp/single-3b --metrics "$OUT/single-3b-train.json" \
  --live /tmp/single-3b-live
