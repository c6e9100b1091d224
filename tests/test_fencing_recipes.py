"""The fencing recipes of docs/fencing.md (examples/fencing/), run against a real sqlite3
and a real redis-server, the way a cluster instance runs them: the token and the lease file
come from the environment workerguard gives it (``workers/leashed.py``'s own functions
write both here, so a renamed variable or a changed lease file fails these tests).

Each recipe must refuse a write under a lower token than one already written, accept the
same token again (a replacement in the same slot keeps its grant's token) and accept a
greater one. The object-store recipe is not run: no S3 or GCS here (docs/fencing.md says so).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest
import redis

from tests.support import RedisServer
from workerguard.workers.leashed import LeaseTerms, lease_environment, write_deadline

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "examples" / "fencing"
PAGE = ROOT / "docs" / "fencing.md"
OLD, NEW = 1_796_402_245_115_190, 1_796_402_245_115_191
"""Two grants' tokens, as the claim script issues them (Redis TIME in µs)."""


@pytest.fixture
def recipes(monkeypatch: pytest.MonkeyPatch) -> dict[str, ModuleType]:
    """The recipe modules, imported as the worker's own files are: from their folder."""
    monkeypatch.syspath_prepend(str(RECIPES))
    import importlib

    return {name: importlib.import_module(name) for name in ("worker_grant", "sql_fence", "redis_fence")}


def grant_environment(tmp_path: Path, token: int, seconds_left: float) -> dict[str, str]:
    """The environment of a cluster instance under ``token``, with a lease file whose
    deadline is ``seconds_left`` away (0: lost), both written by workerguard's code."""
    lease_file = tmp_path / f"scraper.0.{token}.lease"
    deadline = time.clock_gettime(time.CLOCK_BOOTTIME) + seconds_left if seconds_left else 0.0
    write_deadline(lease_file, deadline)
    terms = LeaseTerms(slot=0, token=token, lease_file=lease_file, grace=1.0)
    return {"PATH": "/usr/bin:/bin", **lease_environment(terms)}


def run_recipe(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RECIPES / name), *args], env=env,
                          capture_output=True, text=True, timeout=60)


# the grant, as a worker reads it ----------------------------------------------------------
def test_the_grant_is_read_from_the_environment_workerguard_gives(recipes, tmp_path: Path):
    env = grant_environment(tmp_path, NEW, seconds_left=30)
    grant = recipes["worker_grant"].current_grant(env)
    assert (grant.token, grant.slot) == (NEW, 0)
    assert 25 < grant.seconds_left() <= 30
    write_deadline(grant.lease_file, 0.0)  # what the guard writes once the lease is lost
    assert grant.seconds_left() == 0.0
    grant.lease_file.unlink()
    assert grant.seconds_left() == 0.0


# SQL -------------------------------------------------------------------------------------
def test_a_fence_column_refuses_a_lower_token_and_accepts_the_same_or_a_greater(recipes, tmp_path: Path):
    sql = recipes["sql_fence"]
    db = sqlite3.connect(tmp_path / "app.db")
    db.executescript(sql.SCHEMA)
    assert sql.write_item(db, "invoice-7", "paid by NEW", NEW)
    assert not sql.write_item(db, "invoice-7", "paid by OLD", OLD)  # the stale holder
    assert db.execute("SELECT value, fence FROM items").fetchall() == [("paid by NEW", NEW)]
    assert sql.write_item(db, "invoice-7", "again by NEW", NEW)
    assert sql.write_item(db, "invoice-7", "by a newer grant", NEW + 1)
    assert db.execute("SELECT value, fence FROM items").fetchall() == [("by a newer grant", NEW + 1)]
    assert sql.write_item(db, "invoice-8", "new row", OLD)  # a row no token has written yet
    db.close()


def test_a_leases_table_refuses_a_stale_transaction_whole(recipes, tmp_path: Path):
    sql = recipes["sql_fence"]
    db = sqlite3.connect(tmp_path / "app.db")
    db.executescript(sql.SCHEMA)
    with sql.fenced(db, "scraper/0", NEW):
        db.execute("INSERT INTO items VALUES ('a', 'by NEW', ?)", (NEW,))
    with pytest.raises(sql.StaleToken), sql.fenced(db, "scraper/0", OLD):
        pytest.fail("the block of a stale token must not run")
    with sql.fenced(db, "scraper/0", NEW):  # the same grant writes on
        db.execute("INSERT INTO items VALUES ('b', 'by NEW', ?)", (NEW,))
    with sql.fenced(db, "scraper/1", OLD):  # another slot is another resource
        db.execute("INSERT INTO items VALUES ('c', 'slot 1', ?)", (OLD,))
    assert db.execute("SELECT id FROM items ORDER BY id").fetchall() == [("a",), ("b",), ("c",)]
    assert dict(db.execute("SELECT resource, token FROM leases").fetchall()) == {
        "scraper/0": NEW, "scraper/1": OLD}
    db.close()


def test_a_stale_transaction_racing_a_newer_one_waits_and_is_refused(recipes, tmp_path: Path):
    """The newer grant's transaction holds the write lock; the stale one, started meanwhile
    in another connection, waits for it (or comes after it) and then finds the greater
    token: refused whatever the interleaving."""
    sql = recipes["sql_fence"]
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as setup:
        setup.executescript(sql.SCHEMA)
    outcome: list[str] = []

    def stale_writer() -> None:
        db = sqlite3.connect(path, timeout=60)
        try:
            with sql.fenced(db, "scraper/0", OLD):
                db.execute("INSERT INTO items VALUES ('x', 'by OLD', ?)", (OLD,))
            outcome.append("accepted")
        except sql.StaleToken:
            outcome.append("refused")
        finally:
            db.close()

    newer = sqlite3.connect(path, timeout=60)
    with sql.fenced(newer, "scraper/0", NEW):
        racer = threading.Thread(target=stale_writer)
        racer.start()
        newer.execute("INSERT INTO items VALUES ('x', 'by NEW', ?)", (NEW,))
    racer.join(timeout=90)
    newer.close()
    assert outcome == ["refused"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM items").fetchall() == [("by NEW",)]


def test_a_failing_block_rolls_back_its_writes_and_the_token(recipes, tmp_path: Path):
    sql = recipes["sql_fence"]
    db = sqlite3.connect(tmp_path / "app.db")
    db.executescript(sql.SCHEMA)
    with pytest.raises(RuntimeError), sql.fenced(db, "scraper/0", NEW):
        db.execute("INSERT INTO items VALUES ('a', 'half', ?)", (NEW,))
        raise RuntimeError("the worker failed mid-transaction")
    assert db.execute("SELECT count(*) FROM items").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM leases").fetchone() == (0,)
    db.close()


def test_the_sql_recipe_run_as_two_grants_keeps_the_newer_write(tmp_path: Path):
    path = str(tmp_path / "app.db")
    newer = run_recipe("sql_fence.py", grant_environment(tmp_path, NEW, 30), path, "scraper/0", "x", "new")
    assert newer.returncode == 0, newer.stderr
    assert newer.stdout.strip() == f"accepted under token {NEW}"
    stale = run_recipe("sql_fence.py", grant_environment(tmp_path, OLD, 30), path, "scraper/0", "x", "old")
    assert stale.returncode == 1, stale.stderr
    assert stale.stdout.startswith("refused:")
    lapsed = run_recipe("sql_fence.py", grant_environment(tmp_path, NEW + 1, 0),
                        path, "scraper/0", "x", "late")
    assert (lapsed.returncode, lapsed.stdout.strip()) == (2, "lease lapsed: not writing")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value, fence FROM items").fetchall() == [("new", NEW)]


# Redis -----------------------------------------------------------------------------------
def test_the_lua_fence_refuses_a_lower_token_on_a_real_redis(recipes, redis_client: redis.Redis):
    fenced_set = recipes["redis_fence"].fenced_set
    assert fenced_set(redis_client, "{scraper:0}:fence", "{scraper:0}:result", "by NEW", NEW)
    assert not fenced_set(redis_client, "{scraper:0}:fence", "{scraper:0}:result", "by OLD", OLD)
    assert redis_client.get("{scraper:0}:result") == b"by NEW"
    assert fenced_set(redis_client, "{scraper:0}:fence", "{scraper:0}:result", "again", NEW)
    assert fenced_set(redis_client, "{scraper:0}:fence", "{scraper:0}:result", "newer", NEW + 1)
    assert redis_client.mget("{scraper:0}:fence", "{scraper:0}:result") == [str(NEW + 1).encode(), b"newer"]


def test_the_lua_fence_compares_tokens_exactly_near_the_issued_range(recipes, redis_client: redis.Redis):
    """Tokens one µs apart at today's magnitude (and at the year 2255's, 2^53 - 2) differ in
    Lua: no rounding lets a stale one through."""
    fenced_set = recipes["redis_fence"].fenced_set
    for high in (NEW, 2**53 - 1):
        redis_client.flushdb()
        assert fenced_set(redis_client, "f", "k", "high", high)
        assert not fenced_set(redis_client, "f", "k", "one below", high - 1)


def test_the_redis_recipe_run_as_two_grants_keeps_the_newer_write(tmp_path: Path, redis_server: RedisServer,
                                                                  redis_client: redis.Redis):
    args = (redis_server.url, "{scraper:0}:fence", "{scraper:0}:result")
    newer = run_recipe("redis_fence.py", grant_environment(tmp_path, NEW, 30), *args, "new")
    assert newer.returncode == 0, newer.stderr
    stale = run_recipe("redis_fence.py", grant_environment(tmp_path, OLD, 30), *args, "old")
    assert (stale.returncode, stale.stdout.strip()) == (1, f"refused: a token greater than {OLD} has written")
    assert redis_client.get("{scraper:0}:result") == b"new"


# the page quotes the files as they are ---------------------------------------------------
def test_the_page_quotes_every_recipe_file_as_it_is():
    """Every ``<!-- file: PATH -->`` block of docs/fencing.md equals the file it names, and
    every recipe file is quoted."""
    page = PAGE.read_text(encoding="utf-8")
    quoted = dict(re.findall(r"<!-- file: (\S+) -->\n```\w+\n(.*?)```", page, re.S))
    assert set(quoted) == {f"examples/fencing/{p.name}" for p in RECIPES.glob("*.py")}
    for path, body in quoted.items():
        assert body == (ROOT / path).read_text(encoding="utf-8"), f"docs/fencing.md quotes an old {path}"
