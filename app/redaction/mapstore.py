"""The redaction map: SQLite at ``redaction_map_db``, one row per (map, token).

Values are encrypted with AES-256-GCM (random nonce, the map handle and token as associated
data); a keyed HMAC of (type, value) finds an existing token without storing the value in
clear. Maps expire ``redaction_ttl_s`` after their last scrub and are purged (secure_delete:
freed pages are zeroed). Blocking calls: run them off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.redaction.errors import MapNotFound, MapUnavailable
from app.redaction.tokens import make

HANDLE_RE = re.compile(r"^rm_[A-Za-z0-9_-]{16,64}$")
PURGE_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS maps (
  handle TEXT PRIMARY KEY, created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS maps_expiry ON maps(expires_at);
CREATE TABLE IF NOT EXISTS entries (
  handle TEXT NOT NULL REFERENCES maps(handle) ON DELETE CASCADE,
  token TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
  lookup BLOB NOT NULL, nonce BLOB NOT NULL, value BLOB NOT NULL,
  PRIMARY KEY (handle, token), UNIQUE (handle, lookup));
"""


def derive_keys(secret: str) -> tuple[bytes, bytes]:
    """(AES key, HMAC key) from the configured secret, by HKDF-SHA256."""
    okm = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=b"spark-control redaction map", info=b"v1"
    ).derive(secret.encode())
    return okm[:32], okm[32:]


def load_or_create_key(path: Path) -> str:
    """The key file beside the data (0600), made once when no key is configured."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise MapUnavailable(f"redaction key file {path}: cannot read ({exc.strerror})") from exc
    key = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    except FileExistsError:
        return path.read_text().strip()
    except OSError as exc:
        raise MapUnavailable(f"redaction key file {path}: cannot write ({exc.strerror})") from exc
    return key


class MapStore:
    """Thread-safe access to the map database (one connection, one lock)."""

    def __init__(self, path: Path, secret: str, ttl_s: float) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._aes_key, self._mac_key = derive_keys(secret)
        self._aes = AESGCM(self._aes_key)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_purge = 0.0

    # --- connection ----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.executescript(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;"
                "PRAGMA foreign_keys=ON;" + _SCHEMA
            )
        except (OSError, sqlite3.Error) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise MapUnavailable(
                f"redaction map {self.path} cannot be opened for writing ({why}); "
                "set REDACTION_MAP_DB to a file in a folder this user can write"
            ) from exc
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self._db = db
        return db

    def check(self) -> None:
        """Open (creating the folder and file) or raise MapUnavailable naming the path."""
        with self._lock:
            self._conn()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # --- maps ----------------------------------------------------------------------------

    def _lookup(self, handle: str, kind: str, value: str) -> bytes:
        msg = f"{handle}\x00{kind}\x00{value}".encode()
        return hmac.new(self._mac_key, msg, hashlib.sha256).digest()

    def open_map(self, handle: str | None, now: float | None = None) -> tuple[str, float]:
        """A new map (handle None) or an existing live one, its expiry pushed to now + ttl.
        Returns (handle, expires_at); MapNotFound for an unknown or expired handle."""
        now = time.time() if now is None else now
        expires = now + self.ttl_s
        with self._lock:
            db = self._conn()
            self._maybe_purge(db, now)
            try:
                if handle is None:
                    handle = "rm_" + secrets.token_urlsafe(18)
                    db.execute("INSERT INTO maps VALUES (?, ?, ?)", (handle, now, expires))
                    return handle, expires
                if not HANDLE_RE.match(handle):
                    raise MapNotFound()
                cur = db.execute(
                    "UPDATE maps SET expires_at = ? WHERE handle = ? AND expires_at > ?",
                    (expires, handle, now),
                )
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
            if cur.rowcount != 1:
                raise MapNotFound()
            return handle, expires

    def assign(self, handle: str, found: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The token of each (type, value): the existing one in this map, else the next
        ``[TYPE_N]`` of its type. One transaction."""
        wanted = list(dict.fromkeys(found))
        out: dict[tuple[str, str], str] = {}
        if not wanted:
            return out
        lookups = {pair: self._lookup(handle, *pair) for pair in wanted}
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    existing: dict[bytes, str] = {}
                    keys = list(lookups.values())
                    for i in range(0, len(keys), 500):
                        chunk = keys[i : i + 500]
                        marks = ",".join("?" * len(chunk))
                        rows = db.execute(
                            f"SELECT lookup, token FROM entries WHERE handle = ? "
                            f"AND lookup IN ({marks})",
                            (handle, *chunk),
                        )
                        existing.update({bytes(r[0]): r[1] for r in rows})
                    counters: dict[str, int] = {}
                    for pair, lookup in lookups.items():
                        if lookup in existing:
                            out[pair] = existing[lookup]
                            continue
                        kind, value = pair
                        if kind not in counters:
                            row = db.execute(
                                "SELECT COALESCE(MAX(n), 0) FROM entries "
                                "WHERE handle = ? AND kind = ?",
                                (handle, kind),
                            ).fetchone()
                            counters[kind] = int(row[0])
                        counters[kind] += 1
                        token = make(kind, counters[kind])
                        nonce = os.urandom(12)
                        sealed = self._aes.encrypt(
                            nonce, value.encode(), f"{handle}\x00{token}".encode()
                        )
                        db.execute(
                            "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (handle, token, kind, counters[kind], lookup, nonce, sealed),
                        )
                        out[pair] = token
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
        return out

    def values(
        self, handle: str, tokens: Iterable[str] | None = None, now: float | None = None
    ) -> dict[str, str]:
        """Decrypted values of ``tokens`` (all of the map's when None) of a live map."""
        now = time.time() if now is None else now
        if not HANDLE_RE.match(handle):
            raise MapNotFound()
        with self._lock:
            db = self._conn()
            try:
                live = db.execute(
                    "SELECT 1 FROM maps WHERE handle = ? AND expires_at > ?", (handle, now)
                ).fetchone()
                if live is None:
                    raise MapNotFound()
                if tokens is None:
                    rows = db.execute(
                        "SELECT token, nonce, value FROM entries WHERE handle = ?", (handle,)
                    ).fetchall()
                else:
                    wanted = list(dict.fromkeys(tokens))
                    rows = []
                    for i in range(0, len(wanted), 500):
                        chunk = wanted[i : i + 500]
                        marks = ",".join("?" * len(chunk))
                        rows += db.execute(
                            f"SELECT token, nonce, value FROM entries WHERE handle = ? "
                            f"AND token IN ({marks})",
                            (handle, *chunk),
                        ).fetchall()
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc
        out: dict[str, str] = {}
        for token, nonce, sealed in rows:
            try:
                plain = self._aes.decrypt(nonce, sealed, f"{handle}\x00{token}".encode())
            except InvalidTag as exc:
                raise MapUnavailable(
                    f"redaction map {self.path}: an entry does not decrypt with the "
                    "configured key (was redaction_key changed?)"
                ) from exc
            out[token] = plain.decode()
        return out

    def expires_at(self, handle: str) -> float | None:
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT expires_at FROM maps WHERE handle = ?", (handle,))
                .fetchone()
            )
        return None if row is None else float(row[0])

    def purge(self, now: float | None = None) -> int:
        """Delete expired maps and their entries; returns how many maps went."""
        now = time.time() if now is None else now
        with self._lock:
            return self._purge(self._conn(), now)

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        if now - self._last_purge >= PURGE_EVERY_S:
            self._purge(db, now)

    def _purge(self, db: sqlite3.Connection, now: float) -> int:
        self._last_purge = now
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "DELETE FROM entries WHERE handle IN "
                "(SELECT handle FROM maps WHERE expires_at <= ?)",
                (now,),
            )
            n = db.execute("DELETE FROM maps WHERE expires_at <= ?", (now,)).rowcount
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise self._unavailable(exc) from exc
        return int(n)

    def _unavailable(self, exc: sqlite3.Error) -> MapUnavailable:
        return MapUnavailable(
            f"redaction map {self.path}: database error ({type(exc).__name__}: {exc})"
        )
