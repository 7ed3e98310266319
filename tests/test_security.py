"""Names and paths cannot lead outside the library, and artifact metadata of the wrong types or
sizes is refused with one clear ArtifactError naming the file and the key."""

import json
import sqlite3
import struct

import pytest
import torch
from safetensors.torch import save_file

from softprompt.core import PromptArtifact
from softprompt.core.artifact import MAX_HEADER_BYTES
from softprompt.errors import ArtifactError, ConfigError
from softprompt.library import Library


def artifact(path, name="p", **meta):
    base = {"method": "prompt_tuning", "name": name, "task": {"kind": "classification", "labels": ["a", "b"]},
            "base_model": {"name": "tiny", "fingerprint": "fp", "hidden_size": 4}}
    return PromptArtifact({"prompt.input": torch.ones(2, 4)}, {**base, **meta}).save(path)


@pytest.fixture
def store(tmp_path):
    """A library with one prompt, and a folder beside it standing for everything outside the store."""
    lib = Library(tmp_path / "lib")
    lib.add(artifact(tmp_path / "p.safetensors"))
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "1.safetensors"
    artifact(victim, name="victim")
    return lib, outside, victim


# ------------------------------------------------------------------ library names and paths

@pytest.mark.parametrize("name", ["../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "x\n", "-x", ".hidden",
                                  "a" * 129, "a\x00b", "é"])
def test_names_that_are_not_one_plain_file_name_are_refused(store, tmp_path, name):
    lib, _, _ = store
    with pytest.raises(ConfigError, match="library name"):
        lib.add(artifact(tmp_path / "q.safetensors"), name)
    assert [e.ref for e in lib.entries(all_versions=True)] == ["p:1"]


def test_a_name_read_from_the_artifact_is_checked_too(store, tmp_path):
    lib, _, _ = store
    with pytest.raises(ConfigError, match=r"library name '\.\./\.\./x'"):
        lib.add(artifact(tmp_path / "q.safetensors", name="../../x"))


def tamper(lib, path):
    conn = sqlite3.connect(lib.index_path)
    conn.execute("UPDATE prompts SET path = ? WHERE name = 'p'", (path,))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("planted", ["../../outside/1.safetensors", "ABSOLUTE", "prompts/p/../../../outside/1.safetensors",
                                     "prompts/p/1.safetensors/../../../outside/1.safetensors"])
def test_an_index_row_pointing_outside_is_never_followed(store, planted):
    lib, outside, victim = store
    tamper(lib, str(victim) if planted == "ABSOLUTE" else planted)
    for action in (lambda: lib.get("p"), lambda: lib.load("p"), lambda: lib.remove("p"), lambda: lib.entries(),
                   lambda: lib.export("p", outside / "copy.safetensors")):
        with pytest.raises(ArtifactError, match="not a stored prompt's path.*library check --repair"):
            action()
    report = lib.check(repair=True)
    assert report.unsafe_paths == ["p:1"] and victim.exists()
    assert len(lib) == 0 and lib.check().orphan_files == []  # the row went; the library's own file was an orphan


def test_a_linked_name_folder_is_refused_and_repair_removes_only_the_link(store, tmp_path):
    lib, outside, victim = store
    (lib.prompts_dir / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ArtifactError, match=r"prompts/evil is a symbolic link"):
        lib.add(artifact(tmp_path / "q.safetensors"), "evil")
    assert sorted(p.name for p in outside.iterdir()) == ["1.safetensors"]  # nothing written through the link
    assert lib.rebuild() == 1  # the linked folder's file is not indexed
    report = lib.check(repair=True)
    assert report.unsafe_paths == ["prompts/evil"]
    assert not (lib.prompts_dir / "evil").exists() and victim.exists()


def test_a_linked_prompt_file_is_refused_and_repair_removes_only_the_link(store):
    lib, _, victim = store
    stored = lib.prompts_dir / "p" / "1.safetensors"
    stored.unlink()
    stored.symlink_to(victim)
    with pytest.raises(ArtifactError, match=r"prompts/p/1\.safetensors is a symbolic link"):
        lib.load("p")
    with pytest.raises(ArtifactError, match="symbolic link"):
        lib.remove("p")
    report = lib.check(repair=True)
    assert report.unsafe_paths == ["p:1", "prompts/p/1.safetensors"] and victim.exists() and not stored.is_symlink()


def test_a_linked_prompts_folder_is_refused(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "lib" / "prompts").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="prompts is a symbolic link"):
        Library(tmp_path / "lib")


def test_rebuild_indexes_only_files_at_the_path_their_record_names(store):
    lib, _, _ = store
    moved = lib.prompts_dir / "other" / "7.safetensors"
    moved.parent.mkdir()
    moved.write_bytes((lib.prompts_dir / "p" / "1.safetensors").read_bytes())  # records p:1, lies at other/7
    assert lib.rebuild() == 1 and [e.ref for e in lib.entries(all_versions=True)] == ["p:1"]


# ------------------------------------------------------------------ artifact metadata

def raw(path, meta, tensors=None):
    """A safetensors file with this JSON as its softprompt metadata, written without our checks."""
    save_file(tensors if tensors is not None else {"prompt.input": torch.ones(2, 4)}, str(path),
              metadata={"softprompt": meta if isinstance(meta, str) else json.dumps(meta)})
    return path


GOOD = {"format_version": 1, "method": "prompt_tuning", "shapes": {"prompt.input": [2, 4]},
        "task": {"kind": "classification", "labels": ["a", "b"], "template": "{text} {mask}"},
        "base_model": {"name": "tiny", "fingerprint": "fp", "hidden_size": 4}}


def test_a_well_formed_artifact_loads(tmp_path):
    assert PromptArtifact.load(raw(tmp_path / "ok.safetensors", GOOD)).method == "prompt_tuning"


@pytest.mark.parametrize("change, key", [
    ({"method": ["prompt_tuning"]}, "method"),
    ({"method": 7}, "method"),
    ({"base_model": "tiny"}, "base_model"),
    ({"base_model": {**GOOD["base_model"], "hidden_size": "4"}}, "base_model.hidden_size"),
    ({"base_model": {**GOOD["base_model"], "fingerprint": 12}}, "base_model.fingerprint"),
    ({"base_model": {**GOOD["base_model"], "fingerprint_version": True}}, "base_model.fingerprint_version"),
    ({"task": {**GOOD["task"], "labels": "ab"}}, "task.labels"),
    ({"task": {**GOOD["task"], "labels": [1, 2]}}, "task.labels"),
    ({"task": {**GOOD["task"], "template": {"a": 1}}}, "task.template"),
    ({"task": [1]}, "task"),
    ({"method_config": []}, "method_config"),
    ({"format_version": True}, "format_version"),
    ({"format_version": "1"}, "format_version"),
    ({"shapes": [[2, 4]]}, "shapes"),
    ({"shapes": {"prompt.input": [2, -4]}}, "shapes.prompt.input"),
    ({"shapes": {"prompt.input": "2x4"}}, "shapes.prompt.input"),
    ({"library": {"name": "x", "version": "1"}}, "library.version"),
])
def test_known_keys_of_the_wrong_type_are_refused_naming_the_key(tmp_path, change, key):
    path = raw(tmp_path / "bad.safetensors", {**GOOD, **change})
    with pytest.raises(ArtifactError, match=rf"bad\.safetensors: metadata '{key}' must be .*not a valid prompt artifact"):
        PromptArtifact.load(path)


@pytest.mark.parametrize("meta, error", [
    ([1, 2], "metadata must be a JSON object"),
    ("nul", "corrupt softprompt metadata"),
    ("[" * 200_000 + "]" * 200_000, r"corrupt softprompt metadata \(RecursionError\)"),
    ('{"format_version": ' + "9" * 5000 + "}", r"corrupt softprompt metadata \(ValueError\)"),
    ({**GOOD, "format_version": 99}, "format version 99; this softprompt reads up to 1"),
])
def test_metadata_that_is_not_an_object_of_ours_is_refused(tmp_path, meta, error):
    with pytest.raises(ArtifactError, match=error):
        PromptArtifact.load(raw(tmp_path / "bad.safetensors", meta))


def test_a_huge_header_is_refused_before_it_is_read(tmp_path):
    claimed = tmp_path / "claims.safetensors"
    claimed.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")  # a length field no file should have
    with pytest.raises(ArtifactError, match=r"a header of [\d,]+ bytes, over the [\d,]+ a prompt artifact may have"):
        PromptArtifact.load(claimed)
    big = raw(tmp_path / "big.safetensors", {**GOOD, "notes": "x" * (MAX_HEADER_BYTES + 1)})
    with pytest.raises(ArtifactError, match="over the"):
        PromptArtifact.load(big)


@pytest.mark.parametrize("tensor, error", [
    (torch.ones(2, 4, dtype=torch.int64), "holds torch.int64, expected floating point"),
    (torch.full((2, 4), float("nan")), "holds NaN or infinite values"),
    (torch.full((2, 4), float("inf")), "holds NaN or infinite values"),
])
def test_tensors_a_prompt_cannot_be_are_refused(tmp_path, tensor, error):
    with pytest.raises(ArtifactError, match=error):
        PromptArtifact.load(raw(tmp_path / "t.safetensors", GOOD, {"prompt.input": tensor}))


def test_a_truncated_file_is_refused(tmp_path):
    path = raw(tmp_path / "ok.safetensors", GOOD)
    for size in (0, 5, 20, path.stat().st_size - 1):
        cut = tmp_path / f"cut{size}.safetensors"
        cut.write_bytes(path.read_bytes()[:size])
        with pytest.raises(ArtifactError, match=rf"cut{size}\.safetensors: "):
            PromptArtifact.load(cut)


# ------------------------------------------------------------------ attaching what loaded

@pytest.mark.parametrize("meta, tensors, error", [
    ({"method": "prompt_tuning"}, {"prompt.input": torch.ones(2, 32)}, "no 'task.labels' in its metadata"),
    ({"task": {"kind": "classification", "labels": ["a", "b"]}}, {"prompt.input": torch.ones(2, 32)},
     "no 'method' in its metadata"),
    ({"method": "prompt_tuning", "task": {"kind": "classification", "labels": ["a", "b"]}}, {"prompt.x": torch.ones(2, 32)},
     r"its tensors do not fit method 'prompt_tuning' \(KeyError"),
    ({"method": "prompt_tuning", "task": {"kind": "classification", "labels": ["a", "b"]}}, {"prompt.input": torch.ones(3)},
     r"its tensors do not fit method 'prompt_tuning' \(IndexError"),
])
def test_an_artifact_without_what_attaching_needs_is_refused_in_one_line(tmp_path, meta, tensors, error):
    from tiny import tiny_base

    from softprompt.training.run import load_prompt

    base = tiny_base("gpt2")
    meta = {**meta, "base_model": {"name": "tiny", "fingerprint": base.fingerprint, "hidden_size": 32}}
    path = PromptArtifact(tensors, meta).save(tmp_path / "p.safetensors")
    with pytest.raises(ArtifactError, match=rf"p\.safetensors: {error}"):
        load_prompt(path, base)
