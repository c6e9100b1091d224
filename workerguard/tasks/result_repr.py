"""Celery's text of a task's result, written directly for the plain values a guard returns.

After every task, Celery's tracer turns the result into text (``celery.utils.saferepr``,
capped at the task's ``resultrepr_maxsize``) for the task-succeeded event that Flower
shows and for the "succeeded" log line. saferepr walks the value as a stream of tokens,
which costs ~80 µs for the 13 keys of an ensure's result: a third of the ensure's own
work in the guard worker, and the drain row's largest cut (docs/benchmarks.md, "The
drain, per request"). ``saferepr`` here writes the same text in one recursive pass for
dicts, lists, tuples, strings, numbers, booleans and None, within saferepr's three levels
and shorter than its cap; any other value, a cycle, or a longer text goes to Celery's
own, which then also truncates it. tests/test_result_repr.py checks that both give the
same text for generated values.

``install`` puts it in the tracer's module, in the guard worker's process only
(``ops.runners.start_celery_worker``).
"""

from __future__ import annotations

from numbers import Number
from typing import Any

import celery.app.trace
from celery.utils.saferepr import saferepr as celery_saferepr

MAXLEVELS = 3
"""saferepr's default depth: containers deeper than this are written ``{...}``."""


class _NotPlain(Exception):
    """A value this module does not write: Celery's saferepr does."""


def _text(value: Any, level: int, path: tuple[int, ...]) -> str:
    kind = type(value)
    if kind is str:
        return "'" + str(value).replace("'", "\\'") + "'"
    if kind is int or kind is bool or kind is float:
        return str(value)
    if value is None:
        return "None"
    if kind is dict:
        opening, closing = "{", "}"
    elif kind is list:
        opening, closing = "[", "]"
    elif kind is tuple:
        opening, closing = "(", ",)" if len(value) == 1 else ")"
    else:  # bytes, sets, subclasses, other objects: saferepr's own rules
        raise _NotPlain
    if level >= MAXLEVELS:
        return f"{opening}...{closing}"
    if id(value) in path:  # saferepr writes a cycle as <Recursion on ...>
        raise _NotPlain
    inner = (*path, id(value))
    if kind is dict:
        parts = [f"{_text(k, 0, ())}: {_text(v, level + 1, inner)}" for k, v in value.items()]
    else:
        parts = [_text(item, level + 1, inner) for item in value]
    return opening + ", ".join(parts) + closing


def saferepr(o: Any, maxlen: int | None = None, maxlevels: int = MAXLEVELS,
             seen: Any = None) -> str:
    """``celery.utils.saferepr.saferepr``'s text, written directly where it can be."""
    if maxlevels == MAXLEVELS and seen is None and (maxlen is None or isinstance(maxlen, Number)):
        try:
            text = _text(o, 0, ())
        except _NotPlain:
            pass
        else:
            # saferepr cuts a token as long as what is left of the cap (celery's
            # ``truncate``: ``len(s) >= maxlen``): only a text shorter than the cap is whole
            if maxlen is None or len(text) < maxlen:
                return text
    return str(celery_saferepr(o, maxlen, maxlevels, seen))


def install() -> None:
    """Celery's tracer writes results with ``saferepr`` above (idempotent)."""
    celery.app.trace.saferepr = saferepr


def uninstall() -> None:
    celery.app.trace.saferepr = celery_saferepr
