"""The prompt library: add/list/search/remove/export, versions, concurrent writers and crashes."""

import multiprocessing
import os
import signal

import pytest
import torch

from softprompt.core import PromptArtifact
from softprompt.errors import ArtifactError, ConfigError
from softprompt.library import Library, summary_vector


def make_artifact(path, name="sst2", seed=0, tokens=4, width=8, fingerprint="fp-a", labels=("0", "1"), accuracy=0.8):
    tensors = {"prompt.input": torch.randn(tokens, width, generator=torch.Generator().manual_seed(seed))}
    meta = {"method": "prompt_tuning", "name": name, "method_config": {"num_virtual_tokens": tokens},
            "task": {"kind": "classification", "labels": list(labels)},
            "base_model": {"name": "tiny", "fingerprint": fingerprint, "hidden_size": width},
            "metrics": {"dev": {"accuracy": accuracy}}}
    return PromptArtifact(tensors, meta).save(path)


def test_add_versions_list_show_remove_export(tmp_path):
    lib = Library(tmp_path / "lib")
    a = make_artifact(tmp_path / "a.safetensors", "sst2", seed=0)
    first = lib.add(a, task="sentiment", description="movie reviews")
    second = lib.add(a, task="sentiment")
    lib.add(make_artifact(tmp_path / "b.safetensors", "trec", seed=1, labels="012345"))
    assert (first.version, second.version) == (1, 2)
    assert [e.ref for e in lib.entries()] == ["sst2:2", "trec:1"]
    assert len(lib.entries(all_versions=True)) == 3 == len(lib)
    got = lib.get("sst2:1")
    assert got.task == "sentiment" and got.labels == ["0", "1"] and got.score == 0.8
    assert got.description == "movie reviews" and got.fingerprint == "fp-a"
    assert torch.allclose(torch.from_numpy(got.summary), summary_vector(PromptArtifact.load(a)))
    stored = lib.load("sst2:1")
    assert stored.meta["library"] == {"name": "sst2", "version": 1, "task": "sentiment", "description": "movie reviews"}
    assert torch.equal(stored.tensors["prompt.input"], PromptArtifact.load(a).tensors["prompt.input"])
    (tmp_path / "out").mkdir()
    out = lib.export("sst2", tmp_path / "out")
    assert out.name == "sst2-v2.safetensors" and PromptArtifact.load(out).meta["library"]["version"] == 2
    removed = lib.remove("sst2:2")
    assert [e.ref for e in removed] == ["sst2:2"] and not removed[0].path.exists()
    assert lib.get("sst2").version == 1
    assert lib.add(a).version == 3  # versions are never reused
    assert len(lib.remove("sst2", all_versions=True)) == 2
    with pytest.raises(ArtifactError, match="no prompt 'sst2'"):
        lib.get("sst2")
    assert lib.check().ok


def test_search_filters_and_similarity(tmp_path):
    lib = Library(tmp_path / "lib")
    base = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    for name, tensor, fp, labels in [("near", base + 0.01, "fp-a", ("0", "1")), ("far", -base, "fp-a", ("0", "1")),
                                     ("other-model", base, "fp-b", ("0", "1")), ("trec", base * 0.5 + 1, "fp-a", "012345")]:
        art = PromptArtifact({"prompt.input": tensor}, {"method": "prompt_tuning", "name": name,
                                                          "task": {"kind": "classification", "labels": list(labels)},
                                                          "base_model": {"fingerprint": fp, "hidden_size": 8}})
        lib.add(art, task="questions" if name == "trec" else "sentiment", description=f"{name} prompt")
    assert {e.name for e, _ in lib.search(task="sentiment")} == {"near", "far", "other-model"}
    assert [e.name for e, _ in lib.search(fingerprint="fp-b")] == ["other-model"]
    assert [e.name for e, _ in lib.search(label="5")] == ["trec"]
    assert [e.name for e, _ in lib.search(text="FAR")] == ["far"]
    query = PromptArtifact({"prompt.input": base}, {"method": "prompt_tuning", "base_model": {"fingerprint": "fp-a"}})
    ranked = lib.search(similar_to=query, task="sentiment")
    assert [e.name for e, _ in ranked] == ["near", "far"]  # other-model has another fingerprint
    assert ranked[0][1] == pytest.approx(1.0, abs=1e-3) and ranked[1][1] == pytest.approx(-1.0, abs=1e-3)
    assert len(lib.search(similar_to=query, k=1)) == 1


def test_bad_names_and_refs(tmp_path):
    lib = Library(tmp_path / "lib")
    a = make_artifact(tmp_path / "a.safetensors")
    with pytest.raises(ConfigError, match="library name '../x'"):
        lib.add(a, "../x")
    with pytest.raises(ConfigError, match="must be a number"):
        lib.get("sst2:latest")
    with pytest.raises(ArtifactError, match="file not found"):
        lib.add(tmp_path / "missing.safetensors")


def _writer(root, source, worker, count):
    lib = Library(root)
    for i in range(count):
        lib.add(source, "shared", description=f"w{worker}-{i}")
        lib.add(source, f"own-{worker}")


def test_concurrent_writers_leave_a_consistent_index(tmp_path):
    root = tmp_path / "lib"
    Library(root)
    source = make_artifact(tmp_path / "a.safetensors")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(root, source, w, 5)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    lib = Library(root)
    shared = [e for e in lib.entries(all_versions=True) if e.name == "shared"]
    assert sorted(e.version for e in shared) == list(range(1, 21))  # no version lost or given twice
    assert sorted(e.description for e in shared) == sorted(f"w{w}-{i}" for w in range(4) for i in range(5))
    assert all(lib.get(f"own-{w}").version == 5 for w in range(4))
    assert len(lib) == 40
    report = lib.check()
    assert report.ok and report.entries == 40, report


def test_exception_between_file_and_commit_leaves_nothing(tmp_path, monkeypatch):
    lib = Library(tmp_path / "lib")
    a = make_artifact(tmp_path / "a.safetensors")
    lib.add(a)

    def crash(row):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lib, "_before_commit", crash)
    with pytest.raises(RuntimeError):
        lib.add(a)
    assert [e.ref for e in lib.entries(all_versions=True)] == ["sst2:1"]
    assert sorted(p.name for p in (lib.prompts_dir / "sst2").iterdir()) == ["1.safetensors"]
    assert lib.check().ok


def _killed_writer(root, source):
    lib = Library(root)
    lib._before_commit = lambda row: os.kill(os.getpid(), signal.SIGKILL)
    lib.add(source)


def test_process_killed_mid_write_leaves_a_consistent_index(tmp_path):
    root = tmp_path / "lib"
    source = make_artifact(tmp_path / "a.safetensors")
    Library(root).add(source)
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_killed_writer, args=(root, source))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    lib = Library(root)  # the open transaction died with the process: SQLite rolls it back
    assert [e.ref for e in lib.entries(all_versions=True)] == ["sst2:1"]
    report = lib.check()
    assert report.orphan_files == ["prompts/sst2/2.safetensors"] and not report.missing_files
    assert PromptArtifact.load(root / report.orphan_files[0])  # a whole file, never half of one
    assert lib.add(source).version == 2  # the crashed add's version is taken again, the orphan replaced
    assert lib.check().ok


def test_check_repairs_and_rebuild_recovers_the_index(tmp_path):
    root = tmp_path / "lib"
    lib = Library(root)
    source = make_artifact(tmp_path / "a.safetensors")
    for _ in range(3):
        lib.add(source, task="sentiment")
    lib.get("sst2:2").path.unlink()
    (lib.prompts_dir / "sst2" / ".3.safetensors.tmp").write_bytes(b"half")
    (lib.prompts_dir / "sst2" / "9.safetensors").write_bytes(b"junk")
    report = lib.check(repair=True)
    assert report.missing_files == ["sst2:2"] and len(report.temp_files) == 1 and len(report.orphan_files) == 1
    assert lib.check().ok and [e.version for e in lib.entries(all_versions=True)] == [1, 3]
    lib.index_path.unlink()
    for extra in ("-wal", "-shm"):
        (root / f"index.sqlite{extra}").unlink(missing_ok=True)
    fresh = Library(root)
    assert len(fresh) == 0
    assert fresh.rebuild() == 2
    assert [e.ref for e in fresh.entries(all_versions=True)] == ["sst2:1", "sst2:3"]
    assert fresh.get("sst2:3").task == "sentiment"
    assert fresh.add(source).version == 4
