"""Small data sets and configs for tests, written into a temporary directory."""

import json
import random

from tiny import save_tiny

POS = ["a warm and funny film", "what a wonderful surprise", "great cast", "good and great", "a great film"]
NEG = ["boring and slow", "the plot is dull", "terrible acting", "awful and bad", "slow and far too long"]


def write_data(directory, n=40, seed=0, name="train.jsonl"):
    rng = random.Random(seed)
    path = directory / name
    with path.open("w") as f:
        for i in range(n):
            label = i % 2
            f.write(json.dumps({"text": rng.choice(POS if label else NEG), "label": "positive" if label else "negative"}) + "\n")
    return path


def run_config(tmp_path, family="gpt2", **training):
    model_dir = tmp_path / f"tiny-{family}"
    if not model_dir.exists():
        save_tiny(family, model_dir)
    train = write_data(tmp_path, 40, 0, "train.jsonl")
    dev = write_data(tmp_path, 20, 1, "dev.jsonl")
    task = {"kind": "classification"}
    if family not in ("bert", "roberta"):
        task.update(template="review : {text} sentiment : {mask}", verbalizer={"positive": "good", "negative": "bad"})
    return {
        "name": "t",
        "model": {"name": str(model_dir)},
        "task": task,
        "method": {"name": "prompt_tuning", "num_virtual_tokens": 4, "init": "vocab"},
        "data": {"train": str(train), "dev": str(dev)},
        "training": {"steps": 12, "batch_size": 8, "lr": 0.1, "eval_every": 4, "log_every": 2, **training},
        "output": str(tmp_path / "runs" / "{name}"),
    }


def full_and_resumed(config, tmp_path, stop_at: int):
    """(an uninterrupted run, a run stopped by Ctrl-C after step stop_at and resumed), both trained
    from config into their own folders under tmp_path."""
    import pytest

    from softprompt import api

    quiet = {"progress": False, "log": lambda s: None}
    full = api.train(config, ["output=" + str(tmp_path / "full")], **quiet)

    def stop(step):
        if step == stop_at:
            raise KeyboardInterrupt

    cut = ["output=" + str(tmp_path / "cut")]
    with pytest.raises(KeyboardInterrupt):
        api.train(config, cut, on_step=stop, **quiet)
    assert (tmp_path / "cut" / "checkpoints").exists()
    return full, api.train(config, cut, resume=True, **quiet)
