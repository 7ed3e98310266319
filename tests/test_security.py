"""Names and paths cannot lead outside the library, artifact metadata of the wrong types or sizes is
refused with one clear ArtifactError naming the file and the key (and quoting none of the file), and
the server's admin route loads files only from the directories the operator named."""

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
    with pytest.raises(ArtifactError, match=r"not a safetensors prompt file \(its header length is over") as caught:
        PromptArtifact.load(claimed)
    assert f"{1 << 62:,}" not in str(caught.value) and str(1 << 62) not in str(caught.value)  # the file's bytes
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


# ------------------------------------------------------------------ nothing read is echoed

SECRET = "root:x:0:0:SECRET-LINE"


def _files_that_are_not_prompts(folder):
    """Files an admin might point a server at, each holding SECRET, none a prompt artifact."""
    def header(text: str, size: int | None = None) -> bytes:
        data = text.encode()
        return struct.pack("<Q", size if size is not None else len(data)) + data

    files = {
        "passwd": SECRET.encode() + b"\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
        "short": header('{"a": "%s"}' % SECRET, 400),  # claims more header than the file has
        "bad-json": header('{"%s": ' % SECRET),
        "wrong-type": header('{"t": "%s"}' % SECRET),  # safetensors' parser would quote the string
        "bad-dtype": header(json.dumps({"t": {"dtype": SECRET, "shape": [1], "data_offsets": [0, 4]}})) + b"1234",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.safetensors"
        paths[name].write_bytes(data)
    paths["meta-type"] = raw(folder / "meta-type.safetensors", {**GOOD, "method": [SECRET]})
    paths["meta-shape"] = raw(folder / "meta-shape.safetensors", {**GOOD, "shapes": {"prompt.input": SECRET}})
    paths["meta-list"] = raw(folder / "meta-list.safetensors", [SECRET])
    return paths


def test_no_refusal_of_a_file_quotes_its_content(tmp_path):
    for name, path in _files_that_are_not_prompts(tmp_path).items():
        with pytest.raises(ArtifactError) as caught:
            PromptArtifact.load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and "SECRET" not in message and "root:x" not in message, message
        assert str(struct.unpack("<Q", path.read_bytes()[:8])[0]) not in message.replace(",", ""), message


# ------------------------------------------------------------------ admin loads are confined

ADMIN = {"authorization": "Bearer confined"}


@pytest.fixture(scope="module")
def confined_server(tmp_path_factory):
    """A server whose named prompt directory holds a prompt, beside a folder of files it must not read."""
    import httpx  # noqa: F401  (the tests below need it)
    from serving import METHODS, SENTIMENT, LiveServer, make_prompt
    from tiny import tiny_base

    from softprompt.engine import Engine
    from softprompt.serve import PromptRegistry, ServeSettings, create_app

    root = tmp_path_factory.mktemp("confined")
    base = tiny_base("llama")
    allowed, outside = root / "prompts", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    make_prompt(base, allowed / "ok.safetensors", METHODS["prompt_tuning"], SENTIMENT, seed=1)
    make_prompt(base, outside / "victim.safetensors", METHODS["prompt_tuning"], SENTIMENT, seed=2)
    (root / "prompts-evil").mkdir()  # shares the allowed folder's name as a prefix
    make_prompt(base, root / "prompts-evil" / "p.safetensors", METHODS["prompt_tuning"], SENTIMENT, seed=3)
    (allowed / "link-out.safetensors").symlink_to(outside / "victim.safetensors")
    (allowed / "linked-dir").symlink_to(outside, target_is_directory=True)
    (allowed / "link-in.safetensors").symlink_to(allowed / "ok.safetensors")
    (allowed / "passwd.safetensors").write_bytes(SECRET.encode() + b"\n" * 20)
    registry = PromptRegistry(base, Engine(base), prompt_dirs=[allowed])
    registry.add_file("sentiment", make_prompt(base, root / "start.safetensors", METHODS["prompt_tuning"], SENTIMENT))
    with LiveServer(create_app(registry, ServeSettings(admin_token="confined"))) as server:
        server.allowed, server.outside, server.root = allowed, outside, root
        yield server


def _load(server, path, name="late"):
    import httpx

    return httpx.post(f"{server.url}/admin/prompts", json={"name": name, "path": str(path)}, headers=ADMIN, timeout=30)


def _refused_naming_only(response, path):
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == "path_not_allowed" and error["param"] == "path"
    assert error["message"] == f"{path}: not under a directory this server loads prompts from"


@pytest.mark.parametrize("where", ["/etc/passwd", "/etc/shadow", "/nonexistent/x.safetensors", "OUTSIDE/victim.safetensors",
                                   "ALLOWED/../outside/victim.safetensors", "ALLOWED/../prompts/ok.safetensors",
                                   "../outside/victim.safetensors", "ALLOWED/link-out.safetensors",
                                   "ALLOWED/linked-dir/victim.safetensors", "ROOT/prompts-evil/p.safetensors",
                                   "ROOT/start.safetensors", "ALLOWED/\x00.safetensors", "", "."])
def test_admin_loads_outside_the_prompt_directories_are_403_naming_only_the_path(confined_server, where):
    server = confined_server
    path = (where.replace("ALLOWED", str(server.allowed)).replace("OUTSIDE", str(server.outside))
            .replace("ROOT", str(server.root)))
    import httpx

    _refused_naming_only(_load(server, path, name="sentiment"), path)  # it would have replaced a served prompt

    served = httpx.get(f"{server.url}/v1/prompts", timeout=30).json()["data"]
    assert [(p["name"], p["source"]) for p in served] == [("sentiment", str(server.root / "start.safetensors"))]


def test_a_prompt_under_the_named_directory_loads_and_serves(confined_server):
    import httpx

    for name, file in (("late", "ok.safetensors"), ("via-link", "link-in.safetensors")):
        loaded = _load(confined_server, confined_server.allowed / file, name)
        assert loaded.status_code == 200 and loaded.json()["method"] == "prompt_tuning", loaded.text
        answer = httpx.post(f"{confined_server.url}/v1/classify", json={"model": name, "input": "great"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["data"][0]["label"] in ("positive", "negative")
        assert httpx.delete(f"{confined_server.url}/admin/prompts/{name}", headers=ADMIN, timeout=30).status_code == 200


def test_a_file_in_the_directory_that_is_no_prompt_is_refused_without_its_bytes(confined_server):
    response = _load(confined_server, confined_server.allowed / "passwd.safetensors")
    assert response.status_code == 400 and "SECRET" not in response.text and "root:x" not in response.text
    assert response.json()["error"]["message"].startswith(f"{confined_server.allowed / 'passwd.safetensors'}: not a")


def test_without_named_directories_the_start_up_prompts_folders_and_the_library_are_the_roots(tmp_path):
    from serving import METHODS, SENTIMENT, make_prompt
    from tiny import tiny_base

    from softprompt.engine import Engine
    from softprompt.serve import PromptRegistry

    base = tiny_base("llama")
    (tmp_path / "a").mkdir()
    first = make_prompt(base, tmp_path / "a" / "p.safetensors", METHODS["prompt_tuning"], SENTIMENT)
    registry = PromptRegistry(base, Engine(base), library=tmp_path / "lib")
    assert registry.load_roots() == [(tmp_path / "lib").resolve()]
    registry.add_file("p", first)
    registry.add_base()
    assert registry.load_roots() == [(tmp_path / "a").resolve(), (tmp_path / "lib").resolve()]
    named = PromptRegistry(base, Engine(base), prompt_dirs=[tmp_path / "b"])
    named.add_file("p", first)
    assert named.load_roots() == [(tmp_path / "b").resolve()]  # named directories replace the default


def test_prompt_dir_in_the_serve_yaml_is_read_relative_to_the_file(tmp_path):
    from softprompt.serve.registry import read_prompt_list

    listed = tmp_path / "serve.yaml"
    listed.write_text("prompts: {p: p.safetensors}\nprompt_dir: prompts\n")
    assert read_prompt_list(listed)["prompt_dir"] == [str(tmp_path / "prompts")]
    listed.write_text("prompts: {p: p.safetensors}\nprompt_dir: [/srv/a, b]\n")
    assert read_prompt_list(listed)["prompt_dir"] == ["/srv/a", str(tmp_path / "b")]
    listed.write_text("prompts: {p: p.safetensors}\nprompt_dir: {a: 1}\n")
    with pytest.raises(ConfigError, match="prompt_dir must be a directory or a list of directories"):
        read_prompt_list(listed)


def test_the_serve_command_refuses_a_prompt_dir_that_is_not_there(tmp_path):
    from typer.testing import CliRunner

    from softprompt.cli import app

    result = CliRunner().invoke(app, ["serve", "--prompt-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'none'}: prompt directory not found (--prompt-dir or prompt_dir)"
