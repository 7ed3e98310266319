"""`softprompt library`, `similarity` and `transfer` on the command line: output and one-line errors (exit 2)."""

import json

import pytest
import torch
import yaml
from helpers import run_config
from tiny import tiny_base
from typer.testing import CliRunner

from softprompt import api
from softprompt.cli import app
from softprompt.core import PromptArtifact


def sp(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def artifact(path, fingerprint, seed=0, name="p", width=32):
    tensor = torch.randn(4, width, generator=torch.Generator().manual_seed(seed))
    return PromptArtifact({"prompt.input": tensor}, {
        "method": "prompt_tuning", "name": name, "task": {"kind": "classification", "labels": ["0", "1"]},
        "base_model": {"name": "tiny", "fingerprint": fingerprint, "hidden_size": width}}).save(path)


def test_library_commands(tmp_path):
    lib = ["--library", tmp_path / "lib"]
    a = artifact(tmp_path / "a.safetensors", "fp", 0, "sst2")
    b = artifact(tmp_path / "b.safetensors", "fp", 1, "mr")
    out = sp("library", "add", a, "--task", "sentiment", "--description", "movie reviews", *lib)
    assert out.exit_code == 0 and out.stdout.startswith("added sst2:1"), out.stderr
    assert sp("library", "add", b, *lib).exit_code == 0
    assert sp("library", "add", a, *lib).stdout.startswith("added sst2:2")
    out = sp("library", "list", *lib)
    assert out.exit_code == 0 and "sst2" in out.stdout and "mr" in out.stdout
    rows = [json.loads(line) for line in sp("library", "list", "--json", "--all-versions", *lib).stdout.splitlines()]
    assert [r["ref"] for r in rows] == ["mr:1", "sst2:1", "sst2:2"]
    shown = json.loads(sp("library", "show", "sst2:1", *lib).stdout)
    assert shown["description"] == "movie reviews" and shown["meta"]["library"]["version"] == 1
    found = [json.loads(line) for line in sp("library", "search", "--similar-to", a, "--json", *lib).stdout.splitlines()]
    assert found[0]["name"] == "sst2" and found[0]["similarity"] == pytest.approx(1.0)
    assert "mr" in sp("library", "search", "--task", "mr", *lib).stdout
    out = sp("library", "export", "sst2:1", tmp_path / "x.safetensors", *lib)
    assert out.exit_code == 0 and PromptArtifact.load(tmp_path / "x.safetensors")
    assert sp("library", "rm", "sst2", "--all-versions", *lib).stdout.split() == ["removed", "sst2:1", "removed", "sst2:2"]
    assert "consistent" in sp("library", "check", *lib).stdout
    assert error_line(sp("library", "add", tmp_path / "none.safetensors", *lib)).endswith("none.safetensors: file not found")
    assert "no prompt 'sst2'" in error_line(sp("library", "show", "sst2", *lib))


def test_similarity_command_writes_csv_and_png_and_refuses_mixed_bases(tmp_path):
    paths = [artifact(tmp_path / f"p{i}.safetensors", "fp", i) for i in range(3)]
    out = sp("similarity", *paths, "--measure", "cosine", "--csv", tmp_path / "m.csv", "--png", tmp_path / "m.png")
    assert out.exit_code == 0, out.stderr
    assert (tmp_path / "m.csv").read_text().startswith("cosine,p0,p1,p2") and (tmp_path / "m.png").stat().st_size > 0
    other = artifact(tmp_path / "q.safetensors", "other-model", 5)
    assert "different base models" in error_line(sp("similarity", paths[0], other))
    assert "file not found" in error_line(sp("similarity", paths[0], tmp_path / "missing.safetensors"))
    assert "not one of" in error_line(sp("similarity", *paths, "--measure", "dot"))


def test_transfer_commands(tmp_path):
    config = run_config(tmp_path, steps=2, eval_every=2)
    run = api.train(config, progress=False, log=lambda _: None)
    out = sp("transfer", "zero-shot", run.artifact, tmp_path / "dev.jsonl", "--json")
    assert out.exit_code == 0 and json.loads(out.stdout)["n"] == 20, out.stderr
    out = sp("transfer", "zero-shot", run.artifact, tmp_path / "dev.jsonl", "--map", "positive=negative",
             "--map", "negative=positive", "--json")
    assert out.exit_code == 0, out.stderr
    wrong = artifact(tmp_path / "wrong.safetensors", tiny_base("gpt2").fingerprint[::-1])
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(config))
    err = error_line(sp("transfer", "rank", tmp_path / "target.yaml", wrong, "--by", "zero_shot"))
    assert "made for base model" in err
    out = sp("transfer", "rank", tmp_path / "target.yaml", run.artifact, "--by", "zero_shot", "--k", "1")
    assert out.exit_code == 0 and "\n1. t " in out.stdout and "method.init=artifact" in out.stdout, out.stderr
