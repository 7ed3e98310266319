"""The library's SQLite index: one row per stored prompt version, written in one transaction each.

WAL mode lets readers run while one writer commits; the busy timeout makes concurrent writers
queue instead of failing; `BEGIN IMMEDIATE` takes the write lock before the next version number is
read, so two processes adding the same name at once get different versions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    task TEXT NOT NULL,
    task_kind TEXT,
    method TEXT NOT NULL,
    base_name TEXT,
    fingerprint TEXT,
    hidden_size INTEGER,
    labels TEXT NOT NULL,
    metrics TEXT NOT NULL,
    score REAL,
    num_parameters INTEGER,
    summary BLOB,
    summary_dim INTEGER,
    description TEXT NOT NULL DEFAULT '',
    created TEXT,
    added TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS prompts_task ON prompts (task);
CREATE INDEX IF NOT EXISTS prompts_fingerprint ON prompts (fingerprint);
CREATE TABLE IF NOT EXISTS versions (name TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

COLUMNS = ("name", "version", "path", "sha256", "task", "task_kind", "method", "base_name", "fingerprint",
           "hidden_size", "labels", "metrics", "score", "num_parameters", "summary", "summary_dim", "description",
           "created", "added")


def connect(path: Path, timeout: float = 60.0) -> sqlite3.Connection:
    """A connection to the index at path (created with its schema when new)."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one add.
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # a committed add survives a power cut too
    with transaction(conn):
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (a crash rolls back on next open)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def insert(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
    values = [row.get(c) for c in COLUMNS]
    conn.execute(f"INSERT INTO prompts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)


def encode_vector(vector: np.ndarray | None) -> tuple[bytes | None, int | None]:
    if vector is None:
        return None, None
    vector = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    return vector.tobytes(), int(vector.shape[0])


def decode_vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype="<f4").copy()


def decode_row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["labels"] = json.loads(out["labels"])
    out["metrics"] = json.loads(out["metrics"])
    out["summary"] = decode_vector(out["summary"])
    return out
