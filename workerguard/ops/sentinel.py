"""Redis Sentinel URLs: ``sentinel://[user:PASS@]h1:26379;sentinel://h2:26379;.../0``.

One URL names every Sentinel, ``;``-separated; the name of the primary comes from
``sentinel_master``. The password in the URL is the Redis password (of the primary the
Sentinels name); the Sentinels' own AUTH is ``sentinel_password``, kept apart: redis-py
would otherwise send the Redis password to the Sentinels too.

kombu and Celery read the password and the database from the *first* part only, so
``kombu_url`` writes them into every part: ``sentinel://:PASS@h1:26379/0;...`` with the
password and database wherever the user wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

SCHEME = "sentinel://"
DEFAULT_PORT = 26379


class SentinelURLError(ValueError):
    """A ``sentinel://`` URL that cannot be used; the message shows no secret."""


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a sentinel URL (``repr`` without the credentials)."""

    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def where(self, master: str | None = None) -> str:
        """For an error line: the Sentinels, the master's name and the database, no secret."""
        nodes = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        return f"sentinels {nodes} (master {master or '?'}, db {self.db})"


def is_sentinel(url: str) -> bool:
    return url.startswith(SCHEME)


def parse(url: str) -> SentinelURL:
    """Split ``url`` into its Sentinels, database and credentials.

    The credentials and the database may be written in any part, and must agree where
    written more than once (kombu and Celery would silently use the first part's).
    """
    nodes: list[tuple[str, int]] = []
    found: dict[str, set[str]] = {"username": set(), "password": set(), "db": set()}
    for number, chunk in enumerate(url.split(";"), 1):
        where = f"part {number} of the sentinel URL"
        if not is_sentinel(chunk):
            raise SentinelURLError(f"{where} must start with sentinel:// (parts are ;-separated)")
        try:
            parts = urlsplit(chunk)
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise SentinelURLError(f"{where} has no valid host:port") from None
        if not parts.hostname:
            raise SentinelURLError(f"{where} names no host")
        if parts.query or parts.fragment:
            raise SentinelURLError(f"{where} takes no ?options (TLS to Sentinel is not supported)")
        nodes.append((parts.hostname, port))
        if parts.username:
            found["username"].add(unquote(parts.username))
        if parts.password is not None:
            found["password"].add(unquote(parts.password))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise SentinelURLError(f"{where}: the database must be a number, got {path!r}")
            found["db"].add(path)
    for name, values in found.items():
        if len(values) > 1:
            raise SentinelURLError(f"the parts of the sentinel URL give different {name}s")
    username, password, db = (next(iter(found[k]), None) for k in ("username", "password", "db"))
    return SentinelURL(tuple(nodes), int(db or 0), username, password)


def kombu_url(url: str) -> str:
    """``url`` with the credentials and the database in every part (kombu and Celery read
    them from the first part only)."""
    parsed = parse(url)
    auth = ""
    if parsed.password is not None or parsed.username:
        auth = (f"{quote(parsed.username or '', safe='')}:"
                f"{quote(parsed.password or '', safe='')}@")
    hosts = (f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.nodes)
    return ";".join(f"{SCHEME}{auth}{host}/{parsed.db}" for host in hosts)
