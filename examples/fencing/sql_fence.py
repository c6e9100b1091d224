"""Fencing SQL writes with the grant's token (sqlite3 here; the SQL runs on PostgreSQL too).

Two shapes:

1. ``write_item``: a ``fence`` column on the row itself. A row written under token t
   refuses every lower token.
2. ``fenced``: a ``leases`` table, one row per fenced resource. A transaction first raises
   the resource's token (``UPDATE ... WHERE token <= :mine``); when that changes no row, a
   greater token has been there, and the transaction writes nothing.

Run as a worker would: ``python sql_fence.py DB RESOURCE ITEM VALUE``.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from worker_grant import current_grant

SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (resource TEXT PRIMARY KEY, token INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, value TEXT NOT NULL,
                                  fence INTEGER NOT NULL);
"""


class StaleToken(Exception):
    """A greater token has written: this instance's grant is over."""


def write_item(db: sqlite3.Connection, item_id: str, value: str, token: int) -> bool:
    """Shape 1: insert or update one row; False (nothing written) when the row was
    written under a greater token."""
    with db:
        done = db.execute(
            "INSERT INTO items (id, value, fence) VALUES (:id, :value, :token)"
            " ON CONFLICT (id) DO UPDATE SET value = excluded.value, fence = excluded.fence"
            " WHERE items.fence <= excluded.fence",
            {"id": item_id, "value": value, "token": token})
    return done.rowcount == 1


@contextmanager
def fenced(db: sqlite3.Connection, resource: str, token: int) -> Iterator[sqlite3.Connection]:
    """Shape 2: one transaction on ``resource`` under ``token``. Commits what the block
    writes, or raises StaleToken (and writes nothing) when a greater token got there first."""
    with db:  # commit at the end of the block, roll back on any exception
        db.execute("INSERT INTO leases (resource, token) VALUES (?, 0)"
                   " ON CONFLICT (resource) DO NOTHING", (resource,))
        raised = db.execute("UPDATE leases SET token = :mine"
                            " WHERE resource = :resource AND token <= :mine",
                            {"resource": resource, "mine": token})
        if raised.rowcount != 1:
            raise StaleToken(f"{resource}: a token greater than {token} has written")
        yield db


def main(db_path: str, resource: str, item_id: str, value: str) -> int:
    grant = current_grant()
    if grant.seconds_left() < 1.0:
        print("lease lapsed: not writing")
        return 2
    db = sqlite3.connect(db_path)
    db.executescript(SCHEMA)
    try:
        with fenced(db, resource, grant.token):
            db.execute("INSERT INTO items (id, value, fence) VALUES (?, ?, ?)"
                       " ON CONFLICT (id) DO UPDATE SET value = excluded.value,"
                       " fence = excluded.fence", (item_id, value, grant.token))
    except StaleToken as refused:
        print(f"refused: {refused}")
        return 1
    finally:
        db.close()
    print(f"accepted under token {grant.token}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
