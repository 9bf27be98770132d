#!/usr/bin/env bash
# The AID recipe (configs/pretrain/aid_hr_cpu.yaml, 4 local crops, fp32) on a lent GPU: full MGCL and
# image-level only for SEEDS, every run at once on the one GPU (the tiny model leaves it mostly idle).
# Only the pre-training runs there; the probes run afterwards on the CPU, with the same arguments, on
# the teachers this script returns in $OUT, unpacked here from the folder F they arrive in:
#   (cd runs/bench && tar xzf F/logs.tgz --strip-components=2 runs/bench/gpu)
#   for f in F/seed*.ckpt; do n=$(basename $f .ckpt); cp $f runs/bench/gpu/${n%%_*}/${n#*_}/last.ckpt; done
#   python bench/linear_probe.py --seeds 0,1 --steps S --local-crops 4 --batch B --set lr=LR \
#     --out runs/bench/gpu --tag _gpu
# Run from the repository root on the device machine, carrying .whl (rasterio) and .gpudata: the AID
# train split held at 128 px as on the CPU, re-encoded as JPEG by bench/gpu_data.py.
# A pilot of PILOT steps with every run at once measures the step time; the runs then get the most steps
# (multiples of ROUND, at most MAX_STEPS) that end inside BUDGET_S seconds of the script's start, or
# none if that is under MIN_STEPS. The run of BENCHMARKS.md ("Pre-training on one GPU"):
# BUDGET_S=440 PILOT=30 BATCH=512 LR=7e-4 MIN_STEPS=600.
# COMPILE=default (or reduce-overhead: CUDA graphs, not yet run) compiles the encoders (TrainConfig.compile);
# the pilot then pays the compile, the runs find it in inductor's on-disk cache.
set -u
BUDGET_S=${BUDGET_S:-490}
MAX_STEPS=${MAX_STEPS:-14000}
PILOT=${PILOT:-40}
SEEDS=${SEEDS:-"0 1"}
BATCH=${BATCH:-64}
LR=${LR:-2.5e-4}
MIN_STEPS=${MIN_STEPS:-1000} ROUND=${ROUND:-100}  # smaller values test the script on a CPU
OUT=${OUT:-/tmp/out}
PY=${PY:-python3}
COMPILE=${COMPILE:-}
START=$(date +%s)
[ -n "${NO_WHEELS:-}" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD SKYSENSE_DATA=$PWD/.gpudata PYTHONUNBUFFERED=1 SKYSENSE_BENCH_THREADS=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

run() {  # run SEED VARIANT STEPS DIR
  $PY bench/linear_probe.py --pretrain-only --quiet --seeds "$1" --variants "$2" --steps "$3" \
    --local-crops 4 --batch "$BATCH" --set lr="$LR" ${COMPILE:+--set compile=$COMPILE} --out "$4" >"$4.$1.$2.log" 2>&1
}
pilot_time() {  # slowest median step time (s) of the runs under DIR, steps past the first half
  $PY - "$1" <<'EOF'
import csv, statistics, sys
from pathlib import Path
ts = []
for f in Path(sys.argv[1]).rglob("metrics.csv"):
    rows = list(csv.DictReader(f.open()))
    ts.append(statistics.median(float(r["time"]) for r in rows[len(rows) // 2 :]))
print(max(ts) if ts else 1e9)
EOF
}
run_all() {  # run_all STEPS DIR: every seed and variant at once
  mkdir -p "$2"
  for s in $SEEDS; do run $s full "$1" "$2" & run $s image_only "$1" "$2" & done; wait
}
run_all $PILOT /tmp/pilot
T=$(pilot_time /tmp/pilot)
LEFT=$((BUDGET_S - ($(date +%s) - START) - 30))  # 30 s: start-up of the runs and packing
STEPS=$($PY -c "print(min($MAX_STEPS, int($LEFT / (1.1 * $T) // $ROUND * $ROUND)))")
echo "pilot: ${T} s/step with every run at once; ${LEFT} s left -> ${STEPS} steps (at least $MIN_STEPS to run)"
[ "$STEPS" -lt "$MIN_STEPS" ] || run_all $STEPS runs/bench/gpu
# Back to the CPU: the teacher of each run (what the probes read) and the logs; no optimiser state.
mkdir -p "$OUT"
$PY - "$OUT" <<'EOF'
import sys, torch
from pathlib import Path
for ck in Path("runs/bench/gpu").glob("seed*/*/last.ckpt"):
    c = torch.load(ck, map_location="cpu", weights_only=True)
    keep = {k: c[k] for k in ("config", "step", "teacher")}
    torch.save(keep, Path(sys.argv[1]) / f"{ck.parent.parent.name}_{ck.parent.name}.ckpt")
EOF
tar czf "$OUT/logs.tgz" --exclude='*.ckpt' runs/bench/gpu /tmp/pilot /tmp/pilot.* runs/bench/gpu.* 2>/dev/null
ls -la "$OUT"; for f in runs/bench/gpu.*.log; do echo "$f: $(tail -c 300 "$f")"; done
echo "done in $(($(date +%s) - START)) s"
