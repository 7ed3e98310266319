#!/usr/bin/env bash
# Every GPU check and benchmark the open issues ask for, in one run on a lent GPU machine
# (the device tool runs it in the repository root; results land in $OUT, or bench/results/gpu).
#   - tests marked gpu (bf16 base with float32 prompts, mixed batches, CUDA-graph decoding, compiled prompts)
#   - bench/generate.py --part gpu: the engine against transformers and PEFT on the Llama-3.2-1B shape
#   - bench/train_gpu.py: prompt-tuning training speed and peak memory against PEFT
set -uo pipefail
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/machine.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$out/machine.txt"
timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -W ignore::FutureWarning 2>&1 | tail -40 | tee "$out/gpu_tests.log"
timeout 300 python3 bench/generate.py --part gpu --out "$out/generate_gpu.json" 2>&1 | grep -v Warning | tail -40
timeout 180 python3 bench/train_gpu.py --out "$out/train_gpu.json" 2>&1 | grep -v Warning | tail -30
