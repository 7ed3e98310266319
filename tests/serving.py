"""Prompt files and a live server on loopback, for the server's tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from softprompt.api import build_task, method_config
from softprompt.configs import to_dict
from softprompt.core import PromptArtifact
from softprompt.tasks.runner import TaskPrompt, export_unit

SENTIMENT = {"kind": "classification", "template": "review : {text} sentiment : {mask}",
             "verbalizer": {"positive": "good", "negative": "bad"}}
TOPIC = {"kind": "classification", "template": "the plot is {text} it was {mask}",
         "verbalizer": {"great": "great", "awful": "awful", "fine": "fine"}}
GENERATION = {"kind": "generation", "template": "question : {text} answer : {mask}", "max_new_tokens": 8,
              "max_length": 32}

METHODS = {
    "prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": 3, "init": "random"},
    "ptuning": {"name": "ptuning", "num_virtual_tokens": 2, "encoder": "mlp"},
    "prefix_tuning": {"name": "prefix_tuning", "prefix_length": 3, "init": "random"},
    "ptuning_v2": {"name": "ptuning_v2", "prefix_length": 2, "init": "random"},
    "hard_prompt": {"name": "hard_prompt"},
}


def make_prompt(base, path: Path, method: dict, task: dict, seed: int = 0) -> Path:
    """An untrained prompt file written as training writes one (random starts: the server's tests check
    serving, not quality)."""
    torch.manual_seed(seed)
    method_cls, config = method_config({**method, "seed": seed})
    labels = list(task.get("labels") or task.get("verbalizer", {})) if task["kind"] == "classification" else []
    built = build_task(task, base, labels, getattr(config, "num_virtual_tokens", 0))
    unit = TaskPrompt("t", method_cls.initialise(config, base, label_words=built.label_words), built)
    if method_cls.name == "prompt_tuning":  # well away from real words, so prompts differ visibly
        with torch.no_grad():
            unit.method.embedding.mul_(3.0)
    meta = {"method": method_cls.name, "method_config": to_dict(config),
            "task": {**to_dict(built.config), "kind": built.kind, "labels": labels,
                     **({"template": str(built.template)} if built.kind == "classification" else {})},
            "base_model": {"name": base.name, "model_type": base.info.model_type,
                           "hidden_size": base.info.hidden_size, "num_layers": base.info.num_layers,
                           **base.fingerprint_meta()},
            "metrics": {"dev": {"accuracy": 0.5}}, "name": path.stem}
    return PromptArtifact(export_unit(unit.eval()), meta).save(path)


class LiveServer:
    """A uvicorn server for an app on 127.0.0.1 (a free port), in a thread; stop() drains it."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
