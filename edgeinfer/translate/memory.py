"""Translation memory: every translated sentence kept in SQLite (per model and language pair), so an
exact repeat is answered instantly, plus the history of recent requests for the app."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edgeinfer.translate")
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
    """One SQLite file, safe to share between threads. A damaged file is moved aside (kept, renamed
    ``*.damaged-<time>``) and a fresh one started, so the translator keeps working."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            self.path.replace(aside)
            log.warning("translation memory %s was damaged (%s); moved it to %s and started a new one",
                        self.path, exc, aside)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        try:
            db.executescript(SCHEMA)
            db.execute("SELECT count(*) FROM sentences").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def get(self, model: str, source: str, target: str, text: str) -> str | None:
        key = (model, source, target, text)
        with self._lock:
            row = self._db.execute(f"SELECT translation FROM sentences WHERE {KEY}", key).fetchone()
            if row is not None:
                self._db.execute(f"UPDATE sentences SET hits = hits + 1 WHERE {KEY}", key)
                self._db.commit()
        return row[0] if row else None

    def put(self, model: str, source: str, target: str, text: str, translation: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO sentences (model, source, target, text, translation, "
                             "created) VALUES (?, ?, ?, ?, ?, ?)",
                             (model, source, target, text, translation, time.time()))
            self._db.commit()

    def add_history(self, model: str, source: str, target: str, text: str, translation: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO history (model, source, target, text, translation, created) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (model, source, target, text, translation, time.time()))
            self._db.execute("DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?",
                             (HISTORY_KEPT,))
            self._db.commit()

    def history(self, limit: int = 20) -> list[HistoryEntry]:
        """Recent requests, newest first."""
        with self._lock:
            rows = self._db.execute("SELECT text, translation, source, target, model, created FROM history "
                                    "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [HistoryEntry(*row) for row in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM sentences").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
