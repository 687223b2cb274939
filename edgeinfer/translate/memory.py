"""Translation memory: every translated sentence kept in SQLite (per model and language pair), so an
exact repeat is answered instantly, plus the history of recent requests for the app."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..paths import private_folder

log = logging.getLogger("edgeinfer.translate")
T = TypeVar("T")
HISTORY_KEPT = 1000
KEY = "model=? AND source=? AND target=? AND text=?"
SCHEMA = """
CREATE TABLE IF NOT EXISTS sentences (
    model TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL, text TEXT NOT NULL,
    translation TEXT NOT NULL, hits INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    PRIMARY KEY (model, source, target, text));
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
    text TEXT NOT NULL, translation TEXT NOT NULL, created REAL NOT NULL);
"""


@dataclass(frozen=True)
class HistoryEntry:
    source_text: str
    text: str
    source: str
    target: str
    model: str
    created: float


class TranslationMemory:
    """One SQLite file, safe to share between threads. A damaged file (found when opened, or later by
    any query) is moved aside (kept, renamed ``*.damaged-<time>``) and a fresh one started, so the
    translator keeps working. The file holds the user's texts: 0600 in a 0700 folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        private_folder(self.path.parent)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            self._db = self._start_over(exc)

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():  # created private; SQLite gives its journals the same mode
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        try:
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM sentences").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _start_over(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        self.path.replace(aside)
        log.warning("translation memory %s was damaged (%s); moved it to %s and started a new one",
                    self.path, exc, aside)
        return self._open()

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(db)`` under the lock; a damaged file found meanwhile is set aside and work retried."""
        with self._lock:
            try:
                return work(self._db)
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc):
                    raise
                self._db.close()
                self._db = self._start_over(exc)
                return work(self._db)

    def get(self, model: str, source: str, target: str, text: str) -> str | None:
        key = (model, source, target, text)

        def work(db: sqlite3.Connection) -> str | None:
            row = db.execute(f"SELECT translation FROM sentences WHERE {KEY}", key).fetchone()
            if row is not None:
                db.execute(f"UPDATE sentences SET hits = hits + 1 WHERE {KEY}", key)
                db.commit()
            return row[0] if row else None

        return self._run(work)

    def put(self, model: str, source: str, target: str, text: str, translation: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO sentences (model, source, target, text, translation, "
                       "created) VALUES (?, ?, ?, ?, ?, ?)",
                       (model, source, target, text, translation, time.time()))
            db.commit()

        self._run(work)

    def add_history(self, model: str, source: str, target: str, text: str, translation: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO history (model, source, target, text, translation, created) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (model, source, target, text, translation, time.time()))
            db.execute("DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?", (HISTORY_KEPT,))
            db.commit()

        self._run(work)

    def history(self, limit: int = 20) -> list[HistoryEntry]:
        """Recent requests, newest first."""
        rows = self._run(lambda db: db.execute(
            "SELECT text, translation, source, target, model, created FROM history "
            "ORDER BY id DESC LIMIT ?", (limit,)).fetchall())
        return [HistoryEntry(*row) for row in rows]

    def __len__(self) -> int:
        return int(self._run(lambda db: db.execute("SELECT count(*) FROM sentences").fetchone()[0]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """A corrupt or foreign file (not a busy one: "database is locked" is worth waiting for)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return any(word in str(exc) for word in ("malformed", "not a database"))
