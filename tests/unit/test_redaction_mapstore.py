"""The SQLite map: encrypted values, stable tokens, expiry and purge, clear errors."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from app.redaction.errors import MapNotFound, MapUnavailable
from app.redaction.mapstore import MapStore, load_or_create_key


def test_values_encrypted_and_tokens_stable(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "maps.db"  # a missing folder is created
    store = MapStore(path, "secret-one", ttl_s=3600)
    handle, _ = store.open_map(None)
    a = store.assign(handle, [("PERSON", "Jürgen Müller"), ("EMAIL", "jm@example.de")])
    b = store.assign(handle, [("PERSON", "Zoë Ångström"), ("PERSON", "Jürgen Müller")])
    assert a[("PERSON", "Jürgen Müller")] == b[("PERSON", "Jürgen Müller")] == "[PERSON_1]"
    assert (
        b[("PERSON", "Zoë Ångström")] == "[PERSON_2]"
        and a[("EMAIL", "jm@example.de")] == "[EMAIL_1]"
    )
    assert store.values(handle) == {
        "[PERSON_1]": "Jürgen Müller",
        "[PERSON_2]": "Zoë Ångström",
        "[EMAIL_1]": "jm@example.de",
    }
    assert store.values(handle, ["[PERSON_2]", "[ORG_1]"]) == {"[PERSON_2]": "Zoë Ångström"}
    other, _ = store.open_map(None)  # another map numbers on its own
    assert (
        store.assign(other, [("PERSON", "Zoë Ångström")])[("PERSON", "Zoë Ångström")]
        == "[PERSON_1]"
    )
    store.close()
    raw = b"".join(p.read_bytes() for p in path.parent.iterdir())
    for value in ("Jürgen Müller", "Zoë Ångström", "jm@example.de", "Müller", "example.de"):
        assert value.encode() not in raw
        assert value.encode("utf-16-le") not in raw
    assert os.stat(path).st_mode & 0o077 == 0


def test_wrong_key_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "maps.db"
    store = MapStore(path, "key-a", ttl_s=3600)
    handle, _ = store.open_map(None)
    store.assign(handle, [("PERSON", "Ana Ruiz")])
    store.close()
    with pytest.raises(MapUnavailable) as info:
        MapStore(path, "key-b", ttl_s=3600).values(handle)
    assert "Ana" not in info.value.message and "redaction_key" in info.value.message


def test_expiry_and_purge(tmp_path: Path) -> None:
    store = MapStore(tmp_path / "maps.db", "k", ttl_s=10)
    handle, expires = store.open_map(None, now=1000.0)
    assert expires == 1010.0
    store.assign(handle, [("PERSON", "Ana Ruiz")])
    assert store.open_map(handle, now=1005.0) == (handle, 1015.0)  # a scrub extends
    assert store.values(handle, now=1014.0)
    with pytest.raises(MapNotFound):
        store.values(handle, now=1016.0)
    with pytest.raises(MapNotFound):
        store.open_map(handle, now=1016.0)
    assert store.purge(now=1016.0) == 1
    with sqlite3.connect(tmp_path / "maps.db") as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM maps").fetchone() == (0,)


def test_unknown_or_malformed_handle(tmp_path: Path) -> None:
    store = MapStore(tmp_path / "maps.db", "k", ttl_s=10)
    for handle in ("rm_" + "a" * 24, "../../etc", ""):
        with pytest.raises(MapNotFound):
            store.open_map(handle)
        with pytest.raises(MapNotFound):
            store.values(handle)


def test_path_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("x")
    path = tmp_path / "plain-file" / "maps.db"
    store = MapStore(path, "k", ttl_s=10)
    with pytest.raises(MapUnavailable) as info:
        store.open_map(None)
    assert str(path) in info.value.message and "REDACTION_MAP_DB" in info.value.message


def test_unwritable_folder_is_a_clear_error() -> None:
    """A folder nobody may write in, root included (procfs): a 503 naming the path."""
    path = Path("/proc/self/spark-maps/maps.db")
    store = MapStore(path, "k", ttl_s=10)
    with pytest.raises(MapUnavailable) as info:
        store.check()
    msg = info.value.message
    assert str(path) in msg and "REDACTION_MAP_DB" in msg
    assert info.value.status == 503 and info.value.code == "map_unavailable"


def test_key_file_made_once(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "d" / "redaction.key")
    assert len(key) >= 32 and load_or_create_key(tmp_path / "d" / "redaction.key") == key
    assert os.stat(tmp_path / "d" / "redaction.key").st_mode & 0o077 == 0
