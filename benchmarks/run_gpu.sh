#!/usr/bin/env bash
# The GPU figures in one run (about 8 minutes on one H100/H200), each step bounded in time so that one slow or
# failing step does not cost the others. Run from the repository root; the checkout's src/ is used as is.
#   benchmarks/run_gpu.sh OUTDIR        # results (.md/.csv/.png) go to OUTDIR
set -u
out=${1:?usage: benchmarks/run_gpu.sh OUTDIR}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
peers=(torchvision:resnet50 botnet:botnet50 botnet:botnet50:explicit botnet:botnet26 timm:botnet26t_256
       timm:botnet50ts_256 lucidrains:bot50)

step() {  # step SECONDS SCRIPT ARGS...
  local limit=$1
  shift
  echo "=== $(date +%T) $* (limit ${limit}s)"
  timeout "$limit" "$py" "$@" --device cuda --out "$out" || echo "=== exit $?: $*"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
"$py" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'torchvision', torchvision.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
step 45 benchmarks/amp_check.py --dtype bf16
step 45 benchmarks/attention_memory.py
step 90 benchmarks/throughput.py --dtype bf16 --sizes 256 1024 --batch-sizes 16 --reps 5 --models "${peers[@]}"
step 90 benchmarks/throughput.py --sizes 256 1024 --batch-sizes 16 --reps 5 --models "${peers[@]}"
step 150 benchmarks/throughput.py --dtype bf16 --compile --sizes 256 --batch-sizes 16 --reps 5 \
  --models torchvision:resnet50 botnet:botnet50 --passes fwd+bwd
step 35 benchmarks/attention_memory.py --dtype bf16
step 35 benchmarks/model_memory.py
step 60 benchmarks/profile_step.py --dtype bf16 --batch 16
step 60 benchmarks/throughput.py --dtype bf16 --sizes 256 --batch-sizes 64 --reps 5 --suffix b64 \
  --models torchvision:resnet50 botnet:botnet50 botnet:botnet50:explicit timm:botnet50ts_256
