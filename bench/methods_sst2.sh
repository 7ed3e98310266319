#!/usr/bin/env bash
# Each soft-prompt method on SST-2 with smollm2-135m at the issue's budget (64 steps of 16, full dev
# set), softprompt side only: PEFT's prefix tuning and P-tuning side is still to be added.
#   bash bench/methods_sst2.sh 2>&1 | tee bench/results/methods_sst2.log
set -euo pipefail
cd "$(dirname "$0")/.."
common=(training.steps=64 training.eval_every=64 training.warmup=0 "output=runs/bench-methods/{name}")
text="Classify the sentiment of the review as positive or negative."
run() { echo "== $*"; softprompt train examples/sst2_smollm2.yaml --quiet "${common[@]}" "$@" | tail -1; }
run name=ptuning-mlp "method={name: ptuning, encoder: mlp, num_virtual_tokens: 20, init: text, init_text: '$text'}" training.lr=0.003
run name=prefix "method={name: prefix_tuning, prefix_length: 10, init: words, init_text: '$text'}" training.lr=0.003
run name=ptuning-v2 "method={name: ptuning_v2, prefix_length: 10, init: words, init_text: '$text'}" training.lr=0.003
