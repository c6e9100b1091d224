"""Keep secrets out of logs, reprs and command output."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(r"\b(rediss?|redis\+socket|sentinel|amqps?)://[^\s'\"]+")


def redact_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***``.

    >>> redact_url("redis://:hunter2@db:6379/0")
    'redis://:***@db:6379/0'

    A sentinel URL is redacted part by part (``sentinel://:pw@h1;sentinel://:pw@h2/0``).
    """
    if not url:
        return str(url)
    chunks = re.split(r";(?=sentinel://)", url)
    if len(chunks) > 1:
        return ";".join(redact_url(chunk) for chunk in chunks)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None and "password=" not in parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact every Redis/AMQP URL found inside free text (log lines, error messages)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
