"""The prompt library: artifact files under a directory and a SQLite index over them.

Layout: <root>/index.sqlite and <root>/prompts/<name>/<version>.safetensors. Each add is one
index transaction that holds the write lock while the file is written (atomically: temp file +
os.replace) and commits the row last, so a crash at any point leaves either the whole entry or no
row at all; at worst a complete file with no row, which `check(repair=True)` removes. Version
numbers come from a per-name counter and are never reused, so removing a version cannot race with
a new add of the same name.

The store never reaches outside its root: names are plain file names, every path read from the
index must be the one an add writes (prompts/<name>/<version>.safetensors), and no part of it
below the root may be a symbolic link (a link planted there could make an add write, or a
remove or repair delete, somewhere else).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import PromptArtifact
from ..errors import ArtifactError, ConfigError
from . import index as ix
from .vectors import summary_vector

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would let a final newline in
_STORED = re.compile(r"prompts/([A-Za-z0-9][A-Za-z0-9._-]{0,127})/([1-9][0-9]{0,17})\.safetensors")


def _unicode(value: str, what: str) -> str:
    """value if SQLite can store it (no lone surrogate, as undecodable command-line bytes give), else ConfigError."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"library {what} {value!r}: not valid Unicode (undecodable bytes?)") from None
    return value


def check_name(name: object) -> str:
    """A valid library name (one path component, no '..', no separators), else ConfigError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"library name {name!r}: use letters, digits, '.', '_' or '-' (up to 128), "
                          "starting with a letter or digit")
    return name


def default_root() -> Path:
    """$SOFTPROMPT_LIBRARY, else $XDG_DATA_HOME/softprompt/library (~/.local/share/...)."""
    if os.environ.get("SOFTPROMPT_LIBRARY"):
        return Path(os.environ["SOFTPROMPT_LIBRARY"]).expanduser()
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "softprompt" / "library"


@dataclass
class LibraryEntry:
    """One stored prompt version as the index records it."""

    name: str
    version: int
    path: Path
    sha256: str
    task: str
    task_kind: str | None
    method: str
    base_name: str | None
    fingerprint: str | None
    hidden_size: int | None
    labels: list[str]
    metrics: dict[str, Any]
    score: float | None
    num_parameters: int | None
    summary: np.ndarray | None = field(repr=False)
    description: str = ""
    created: str | None = None
    added: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "summary"}
        out["path"] = str(self.path)
        out["ref"] = self.ref
        out["summary_dim"] = None if self.summary is None else int(self.summary.shape[0])
        return out


@dataclass
class CheckReport:
    """What `Library.check` found (and, with repair, fixed)."""

    entries: int = 0
    missing_files: list[str] = field(default_factory=list)  # rows whose file is gone
    bad_hashes: list[str] = field(default_factory=list)  # rows whose file changed on disk
    orphan_files: list[str] = field(default_factory=list)  # files without a committed row
    temp_files: list[str] = field(default_factory=list)  # leftovers of interrupted writes
    unsafe_paths: list[str] = field(default_factory=list)  # rows or links that lead outside the store
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing_files or self.bad_hashes or self.orphan_files or self.temp_files
                    or self.unsafe_paths)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _score(metrics: dict) -> float | None:
    """The headline number: dev accuracy (else the first dev number), else the same on test."""
    for split in ("dev", "test"):
        values = metrics.get(split) or {}
        if isinstance(values.get("accuracy"), (int, float)):
            return float(values["accuracy"])
        numbers = [v for v in values.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numbers:
            return float(numbers[0])
    return None


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'name' (latest version) or 'name:version'."""
    name, _, version = _unicode(str(ref), "reference").partition(":")
    if version:
        if not re.fullmatch(r"[0-9]{1,18}", version):  # ASCII (isdigit takes '²'), and what SQLite holds
            example = f"{name}:2" if _NAME.fullmatch(name) else "name:2"
            raise ConfigError(f"library reference {ref!r}: the version after ':' must be a number, e.g. {example}")
        return name, int(version)
    return name, None


class Library:
    """A store of prompt artifacts with an index of what each holds (safe for concurrent writers)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.prompts_dir = self.root / "prompts"
        self.index_path = self.root / "index.sqlite"
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"library {self.root}: exists and is not a directory")
        if self.prompts_dir.is_symlink():
            raise ConfigError(f"library {self.root}: prompts is a symbolic link; the store holds only its own files")
        self.prompts_dir.mkdir(parents=True, exist_ok=True)
        self._connect().close()  # create the schema once, early

    def _connect(self):
        try:
            return ix.connect(self.index_path)
        except sqlite3.Error as exc:
            raise ArtifactError(f"library {self.root}: cannot open the index {self.index_path} ({exc})") from None

    def _stored_path(self, rel: str) -> Path:
        """The file an index row names, refusing a path an add would not write or one through a link."""
        if not _STORED.fullmatch(str(rel)):
            raise ArtifactError(f"library {self.root}: the index names {str(rel)[:80]!r}, which is not a stored "
                                "prompt's path; run `softprompt library check --repair`")
        path = self.root / rel
        for part in (self.prompts_dir, path.parent, path):
            if part.is_symlink():
                raise ArtifactError(f"library {self.root}: {part.relative_to(self.root)} is a symbolic link; "
                                    "the store holds only its own files (remove the link)")
        return path

    # -- writing ---------------------------------------------------------------------------------
    def add(self, source: str | Path | PromptArtifact, name: str | None = None, *, task: str | None = None,
            description: str = "") -> LibraryEntry:
        """Store a copy of an artifact as the next version of name (default: the artifact's run name)."""
        artifact = source if isinstance(source, PromptArtifact) else PromptArtifact.load(source)
        meta = artifact.meta
        name = check_name(name or meta.get("name"))
        task = _unicode(str(task or meta.get("library", {}).get("task") or name), "task")
        description = _unicode(str(description), "description")
        row = _row_from_artifact(artifact, {"name": name, "version": 0, "task": task, "description": description},
                                 "", "")
        conn = self._connect()
        written: Path | None = None
        try:
            with ix.transaction(conn):
                found = conn.execute("SELECT last FROM versions WHERE name = ?", (name,)).fetchone()
                version = (found["last"] if found else 0) + 1
                conn.execute("INSERT OR REPLACE INTO versions VALUES (?, ?)", (name, version))
                rel = Path("prompts") / name / f"{version}.safetensors"
                self._stored_path(rel.as_posix())  # no link on the way: the write stays in the store
                stored_meta = {**meta, "library": {"name": name, "version": version, "task": task,
                                                   "description": description}}
                written = PromptArtifact(dict(artifact.tensors), stored_meta).save(self.root / rel)
                row.update(version=version, path=rel.as_posix(), sha256=_sha256(written))
                self._before_commit(row)
                ix.insert(conn, row)
        except BaseException as exc:
            # Rolled back: take the file with it (a hard kill leaves it for check(repair=True)).
            if written is not None and written.exists():
                written.unlink()
            if isinstance(exc, sqlite3.Error):  # e.g. "database or disk is full"
                raise ArtifactError(f"library {self.root}: cannot add {name!r} ({exc}); the library is unchanged") from None
            raise
        finally:
            conn.close()
        return self._entry(row)

    def _before_commit(self, row: dict) -> None:
        """Hook between the file write and the index commit (tests inject crashes here)."""

    def remove(self, ref: str, *, all_versions: bool = False) -> list[LibraryEntry]:
        """Delete one version (or every version of a name); returns what was removed."""
        name, _ = parse_ref(ref)
        conn = self._connect()
        try:
            with ix.transaction(conn):
                if all_versions:
                    rows = conn.execute("SELECT * FROM prompts WHERE name = ?", (name,)).fetchall()
                else:
                    rows = [self._row(conn, ref)]
                if not rows:
                    raise ArtifactError(f"library {self.root}: no prompt named {name!r}")
                removed = [self._entry(ix.decode_row(r)) for r in rows]  # paths checked before anything goes
                for r in rows:
                    conn.execute("DELETE FROM prompts WHERE name = ? AND version = ?", (r["name"], r["version"]))
        finally:
            conn.close()
        # Files go after the commit: a crash here leaves an orphan file, never a row without its file.
        for entry in removed:
            entry.path.unlink(missing_ok=True)
        return removed

    # -- reading ---------------------------------------------------------------------------------
    def _row(self, conn, ref: str):
        name, version = parse_ref(ref)
        if version is None:
            row = conn.execute("SELECT * FROM prompts WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)).fetchone()
        else:
            row = conn.execute("SELECT * FROM prompts WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute("SELECT DISTINCT name FROM prompts ORDER BY name LIMIT 20")]
            hint = f"; stored names: {', '.join(known)}" if known else "; the library is empty"
            raise ArtifactError(f"library {self.root}: no prompt {ref!r}{hint}")
        return row

    def _entry(self, row: dict) -> LibraryEntry:
        fields = {k: row[k] for k in ix.COLUMNS if k not in ("summary_dim",)}
        fields["path"] = self._stored_path(row["path"])
        if isinstance(fields["labels"], str):
            fields["labels"] = json.loads(fields["labels"])
            fields["metrics"] = json.loads(fields["metrics"])
            fields["summary"] = ix.decode_vector(fields["summary"])
        return LibraryEntry(**fields)

    def get(self, ref: str) -> LibraryEntry:
        """The entry 'name' (latest version) or 'name:version' refers to."""
        conn = self._connect()
        try:
            return self._entry(ix.decode_row(self._row(conn, ref)))
        finally:
            conn.close()

    def load(self, ref: str) -> PromptArtifact:
        """The stored artifact of a reference."""
        return PromptArtifact.load(self.get(ref).path)

    def entries(self, *, all_versions: bool = False) -> list[LibraryEntry]:
        """Every stored prompt (latest version of each name unless all_versions), by name."""
        conn = self._connect()
        try:
            if all_versions:
                rows = conn.execute("SELECT * FROM prompts ORDER BY name, version").fetchall()
            else:
                rows = conn.execute(
                    "SELECT p.* FROM prompts p JOIN (SELECT name, MAX(version) AS v FROM prompts GROUP BY name) m "
                    "ON p.name = m.name AND p.version = m.v ORDER BY p.name"
                ).fetchall()
        finally:
            conn.close()
        return [self._entry(ix.decode_row(r)) for r in rows]

    def search(self, *, task: str | None = None, method: str | None = None, fingerprint: str | None = None,
               label: str | None = None, text: str | None = None, similar_to: str | Path | PromptArtifact | None = None,
               k: int | None = None, all_versions: bool = False) -> list[tuple[LibraryEntry, float | None]]:
        """Entries matching every given filter; with similar_to, ranked by cosine of token-averaged prompts
        (only prompts on the same base model, fingerprint and width, are compared)."""
        found = []
        for e in self.entries(all_versions=all_versions):
            if task is not None and e.task != task:
                continue
            if method is not None and e.method != method:
                continue
            if fingerprint is not None and e.fingerprint != fingerprint:
                continue
            if label is not None and label not in e.labels:
                continue
            if text is not None and text.lower() not in f"{e.name} {e.task} {e.description}".lower():
                continue
            found.append(e)
        if similar_to is None:
            return [(e, None) for e in found][: k if k else None]
        query = self._as_artifact(similar_to)
        q = summary_vector(query).numpy()
        q_fp = query.meta.get("base_model", {}).get("fingerprint")
        scored = []
        for e in found:
            if e.summary is None or e.fingerprint != q_fp or e.summary.shape != q.shape:
                continue
            denom = float(np.linalg.norm(q) * np.linalg.norm(e.summary)) or 1.0
            scored.append((e, float(np.dot(q, e.summary) / denom)))
        scored.sort(key=lambda pair: -pair[1])
        return scored[: k if k else None]

    def _as_artifact(self, item: str | Path | PromptArtifact) -> PromptArtifact:
        if isinstance(item, PromptArtifact):
            return item
        if Path(item).suffix == ".safetensors" or Path(item).exists():
            return PromptArtifact.load(item)
        return self.load(str(item))

    def resolve(self, item: str | Path | PromptArtifact) -> PromptArtifact:
        """An artifact from a file path, a library reference or an artifact."""
        return self._as_artifact(item)

    def export(self, ref: str, destination: str | Path) -> Path:
        """Copy a stored prompt out of the library (to a file, or into a directory as <name>-v<version>)."""
        entry = self.get(ref)
        destination = Path(destination)
        if destination.is_dir():
            destination = destination / f"{entry.name}-v{entry.version}.safetensors"
        tmp = destination.with_name(f".{destination.name}.tmp{os.getpid()}")
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry.path, tmp)
            os.replace(tmp, destination)
        except OSError as exc:
            raise ArtifactError(f"{destination}: cannot export {entry.ref} ({exc.strerror or exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return destination

    # -- consistency -----------------------------------------------------------------------------
    def check(self, *, repair: bool = False, verify_hashes: bool = True) -> CheckReport:
        """Compare the index with the files; with repair, drop rows without files and files without rows.

        Runs under the write lock, so no add is half-way through while it looks.
        """
        report = CheckReport()
        conn = self._connect()
        try:
            with ix.transaction(conn):
                rows = conn.execute("SELECT name, version, path, sha256 FROM prompts").fetchall()
                report.entries = len(rows)
                indexed = set()
                for r in rows:
                    try:
                        path = self._stored_path(r["path"])
                    except ArtifactError:  # a row that points elsewhere: dropped on repair, never followed
                        report.unsafe_paths.append(f"{r['name']}:{r['version']}")
                        if repair:
                            conn.execute("DELETE FROM prompts WHERE name = ? AND version = ?", (r["name"], r["version"]))
                        continue
                    indexed.add(path.resolve())
                    if not path.exists():
                        report.missing_files.append(f"{r['name']}:{r['version']}")
                        if repair:
                            conn.execute("DELETE FROM prompts WHERE name = ? AND version = ?", (r["name"], r["version"]))
                    elif verify_hashes and _sha256(path) != r["sha256"]:
                        report.bad_hashes.append(f"{r['name']}:{r['version']}")
                for path in sorted(self.prompts_dir.rglob("*")):  # does not descend into linked folders
                    if path.is_symlink():  # repair removes the link itself, never what it points to
                        report.unsafe_paths.append(str(path.relative_to(self.root)))
                        if repair:
                            path.unlink()
                        continue
                    if not path.is_file():
                        continue
                    if path.name.startswith("."):
                        report.temp_files.append(str(path.relative_to(self.root)))
                        if repair:
                            path.unlink()
                    elif path.resolve() not in indexed:
                        report.orphan_files.append(str(path.relative_to(self.root)))
                        if repair:
                            path.unlink()
                report.repaired = repair
        finally:
            conn.close()
        return report

    def rebuild(self) -> int:
        """Recreate the index from the stored files (each stored copy records its name and version)."""
        conn = self._connect()
        count = 0
        try:
            with ix.transaction(conn):
                conn.execute("DELETE FROM prompts")
                for path in self._stored_files():
                    rel = path.relative_to(self.root).as_posix()
                    try:
                        artifact = PromptArtifact.load(path)
                    except ArtifactError:
                        continue
                    info = artifact.meta.get("library") or {}
                    # Only a file at the path its own record names: prompts/<name>/<version>.safetensors.
                    if rel != f"prompts/{info.get('name')}/{info.get('version')}.safetensors":
                        continue
                    entry_row = _row_from_artifact(artifact, info, rel, _sha256(path))
                    ix.insert(conn, entry_row)
                    conn.execute("INSERT INTO versions VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET "
                                 "last = MAX(last, excluded.last)", (info["name"], info["version"]))
                    count += 1
        finally:
            conn.close()
        return count

    def _stored_files(self) -> list[Path]:
        """Every file at a stored prompt's path, through no symbolic link."""
        found = []
        for folder in sorted(self.prompts_dir.iterdir()):
            if folder.is_symlink() or not folder.is_dir():
                continue
            found += [p for p in sorted(folder.glob("*.safetensors"))
                      if not p.is_symlink() and _STORED.fullmatch(p.relative_to(self.root).as_posix())]
        return found

    def __len__(self) -> int:
        conn = self._connect()
        try:
            return conn.execute("SELECT COUNT(*) FROM prompts").fetchone()[0]
        finally:
            conn.close()

    def __iter__(self) -> Iterator[LibraryEntry]:
        return iter(self.entries())


def _row_from_artifact(artifact: PromptArtifact, info: dict, rel: str, sha: str) -> dict:
    meta = artifact.meta
    base = meta.get("base_model", {})
    metrics = meta.get("metrics", {})
    summary, dim = ix.encode_vector(summary_vector(artifact).numpy())
    return {
        "name": info["name"], "version": int(info["version"]), "path": rel, "sha256": sha,
        "task": str(info.get("task") or info["name"]), "task_kind": meta.get("task", {}).get("kind"),
        "method": meta.get("method", "unknown"), "base_name": base.get("name"), "fingerprint": base.get("fingerprint"),
        "hidden_size": base.get("hidden_size"), "labels": json.dumps(meta.get("task", {}).get("labels", [])),
        "metrics": json.dumps(metrics), "score": _score(metrics), "num_parameters": artifact.num_parameters,
        "summary": summary, "summary_dim": dim, "description": info.get("description", ""),
        "created": meta.get("created"), "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
