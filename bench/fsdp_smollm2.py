"""The same run on the embedded SmolLM2-135M in one process, two data-parallel processes and two
processes sharding the base (FSDP through accelerate's config, examples/accelerate/fsdp.yaml), on
CPUs (gloo): the final prompts side by side, the dev accuracy, each process's share of the base and
the peak resident memory of each process. One seed; timings are one run each (not compared).

    python bench/fsdp_smollm2.py --out bench/results/fsdp_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "src" / "softprompt" / "examples"


def config(work: Path, steps: int) -> Path:
    demo = yaml.safe_load((EXAMPLES / "demo.yaml").read_text())
    demo["data"] = {"train": str(EXAMPLES / "sentiment_train.jsonl"), "dev": str(EXAMPLES / "sentiment_dev.jsonl")}
    demo["training"].update(steps=steps, eval_every=steps, checkpoint_every=steps, log_every=steps)
    demo["output"] = str(work / "{name}")
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def run(command: list[str], env: dict) -> tuple[str, dict[int, int], float]:
    """The command's output, the peak RSS of each process in its tree (sampled every 50 ms) and its wall time."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peaks: dict[int, int] = {}
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                for p in [root, *root.children(recursive=True)]:
                    peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = process.communicate(timeout=3600)
    done.set()
    thread.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{out[-3000:]}")
    return out, peaks, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "fsdp_bench")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = config(args.work, args.steps)
    softprompt = [sys.executable, "-m", "softprompt.cli"]
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}

    def launch(*how: str) -> list[str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [accelerate, "launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", str(port), *how, "-m", "softprompt.cli"]

    sides = {
        "one process": softprompt,
        "2 processes, data-parallel": launch("--multi_gpu"),
        "2 processes, FSDP": launch("--config_file", str(ROOT / "examples" / "accelerate" / "fsdp.yaml")),
    }
    rows = []
    for label, command in sides.items():
        name = re.sub(r"\W+", "-", label).strip("-")
        out, peaks, wall = run([*command, "train", str(path), f"name={name}", "--quiet"], env)
        python = sorted(v for pid, v in peaks.items() if v > 200 * 2 ** 20)  # the training processes, not launchers
        held = re.search(r"this process holds (.+?) of the base's (.+?)\)", out)
        metrics = json.loads((args.work / name / "metrics.json").read_text())
        rows.append({"side": label, "dev_accuracy": metrics["dev"]["accuracy"], "wall_seconds": round(wall, 1),
                     "peak_rss_gib": [round(v / 2 ** 30, 2) for v in python],
                     "base_held": f"{held.group(1)} of {held.group(2)}" if held else "whole",
                     "prompt": str(args.work / name / "prompt.safetensors")})
        print(json.dumps(rows[-1]))
    reference = load_file(rows[0]["prompt"])
    for row in rows:
        tensors = load_file(row["prompt"])
        row["max_abs_diff_vs_one"] = max(float((tensors[k] - reference[k]).abs().max()) for k in reference)
    print("| side | dev accuracy | max abs diff of the prompt vs one process | base held per process | "
          "peak RSS per process (GiB) | wall s |")
    print("| --- | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        print(f"| {r['side']} | {r['dev_accuracy']:.4f} | {r['max_abs_diff_vs_one']:.2e} | {r['base_held']} | "
              f"{', '.join(map(str, r['peak_rss_gib']))} | {r['wall_seconds']} |")
    if args.out:
        args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}",
                                        "steps": args.steps, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
