"""MkDocs hook: the pages whose text comes from the code, written when the site is built.

- ``config-reference.md``: every key of the configuration file, from the pydantic models
  that load it (``Settings``, ``Profile``, ``ClusterSettings`` and the probe models).
  Type, default and bounds come from the JSON Schema that ``workerguard schema`` prints;
  the description is the field's attribute docstring. A key added to a model shows up here by itself, with
  the docstring written beside it.
- ``callers.md``: the callers' snippets, copied from ``README.md``, where
  ``tests/test_readme.py`` runs them, so the site shows exactly the code that is tested.

Each page holds a ``<!-- generated: ... -->`` mark where the text goes. Named in
``mkdocs.yml`` under ``hooks:``; ``reference_markdown()`` is what ``tests/test_docs.py``
checks. Imports nothing of MkDocs.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_PAGE = "config-reference.md"
REFERENCE_MARK = "<!-- generated: config reference -->"
CALLERS_PAGE = "callers.md"
SNIPPETS_MARK = "<!-- generated: README snippets -->"
NO_DESCRIPTION = "(no docstring)"
"""What a field without an attribute docstring gets: ``tests/test_docs.py`` refuses it
for ``Settings`` and ``Profile``."""
SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n(```\w+\n.*?```)", re.S)
SNIPPET_TITLES = {
    "python": "Python, with only `pip install 'celery[redis]'` (plain `celery` lacks what "
              "kombu's Redis transport needs)",
    "celery-cli": "Celery's CLI (`celery call` prints the task id, `celery result` waits for "
                  "the answer)",
    "flower-api": "Flower's HTTP API through `workerguard flower` (with `--basic-auth`, see "
                  "[Flower](operations.md#flower)): the body of `send-task` carries `args`, "
                  "`kwargs` and every `send_task` option; `result?timeout=N` waits up to N "
                  "seconds for the answer",
}

if str(ROOT) not in sys.path:  # a checkout built without installing it
    sys.path.insert(0, str(ROOT))


# reading the models ----------------------------------------------------------------------
def attribute_docstrings(model: type) -> dict[str, str]:
    """The string literal right after each annotated attribute, in ``model`` and its
    bases (what pydantic's ``use_attribute_docstrings`` reads, for models without it)."""
    found: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls.__module__.partition(".")[0] in ("builtins", "pydantic", "typing"):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for node, after in zip(body.body, body.body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                found[node.target.id] = after.value.value
    return found


def _inline(text: str) -> str:
    """Docstring text as one line of a Markdown table cell: reST ``code`` as `code`;
    ``<``, ``>`` and ``|`` escaped outside code (Python-Markdown splits no cell inside
    a code span)."""
    text = " ".join(text.split()).replace("``", "`")
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts)


def _literal(value: Any) -> str:
    if value is None:
        return "absent"
    return f"`{json.dumps(value)}`"


def _type(prop: dict[str, Any]) -> str:
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "oneOf" in prop or "anyOf" in prop:
        if "discriminator" in prop:
            return f"table, by `{prop['discriminator']['propertyName']}`"
        return " or ".join(_type(p) for p in prop.get("oneOf") or prop["anyOf"])
    if "$ref" in prop:
        return "table"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"array of {_type(prop.get('items', {}))}"
    if kind == "object":
        return f"table of {_type(prop.get('additionalProperties', {}))}"
    if prop.get("format") == "path":
        return "string (a path)"
    return str(kind)


def _bounds(prop: dict[str, Any]) -> str:
    found = []
    for key, word in (("exclusiveMinimum", "> {}"), ("minimum", ">= {}"),
                      ("exclusiveMaximum", "< {}"), ("maximum", "<= {}")):
        if key in prop:
            found.append(word.format(prop[key]))
    if "enum" in prop:
        found.append("one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"]))
    if prop.get("minLength") == 1 or prop.get("minItems") == 1:
        found.append("not empty")
    elif "minItems" in prop:
        found.append(f"at least {prop['minItems']} items")
    if "maxLength" in prop:
        found.append(f"at most {prop['maxLength']} characters")
    if "maxItems" in prop:
        found.append(f"at most {prop['maxItems']} items")
    if "pattern" in prop:
        found.append(f"matches `{prop['pattern']}`")
    items = prop.get("items")
    if isinstance(items, dict) and (inner := _bounds(items)):
        found.append(f"each item {inner}")
    banned = prop.get("propertyNames", {}).get("not", {}).get("pattern")
    if banned:
        found.append(f"no key matching `{banned}`")
    return "; ".join(found) or "—"


def _default(model: type, name: str, prop: dict[str, Any]) -> str:
    field = model.model_fields[name]  # type: ignore[attr-defined]
    if field.default_factory is not None:
        made = field.default_factory()
        return _literal(made) if made in ({}, [], ()) else "computed: see the description"
    if "default" in prop:
        return _literal(prop["default"])
    return "required" if field.is_required() else _literal(field.default)


def _table(model: type, schema: dict[str, Any], *, env_prefix: str | None = None,
           only: list[str] | None = None, not_in_table: str = "",
           missing: str = NO_DESCRIPTION) -> list[str]:
    """One row per field of ``model`` (or the fields in ``only``)."""
    fields: dict[str, Any] = model.model_fields  # type: ignore[attr-defined]
    docs = attribute_docstrings(model)
    header = "| key | type | default | bounds |" + (" variable |" if env_prefix else "") + " description |"
    rows = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in only if only is not None else list(fields):
        prop = schema.get("properties", {}).get(name)
        text = fields[name].description or docs.get(name) or missing
        if prop is None:  # not a key of the table (a profile's name)
            cells = [f"`{name}`", "string", not_in_table, "—"]
        else:
            cells = [f"`{name}`", _type(prop), _default(model, name, prop), _bounds(prop)]
        if env_prefix:
            cells.append(f"`{env_prefix}{name.upper()}`")
        cells.append(_inline(text))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _definition(schema: dict[str, Any], model: type) -> dict[str, Any]:
    found = schema.get("$defs", {}).get(model.__name__)
    if isinstance(found, dict):
        return found
    made: dict[str, Any] = model.model_json_schema()  # type: ignore[attr-defined]
    return made


def reference_markdown() -> str:
    """The generated part of the configuration reference, as Markdown."""
    from workerguard.config.schema import ENV_PREFIX, ClusterSettings, Profile, Settings, json_schema
    from workerguard.probes.spec import AnyProbe

    schema = json_schema()
    profiles = schema.get("properties", {}).get("profiles", {})
    name_pattern = next(iter(profiles.get("patternProperties", {})), None)
    profile_name = "the table's key, `[profiles.NAME]`" + (
        f" (matches `{name_pattern}`)" if name_pattern else "")
    out = [
        "## `[guard]`", "",
        _inline(Settings.__doc__ or ""), "",
        "Environment values are text: `WORKERGUARD_SWEEP_ON_START=0`, "
        "`WORKERGUARD_LOCK_EXPIRE=15`; an error names the variable.", "",
        *_table(Settings, _definition(schema, Settings), env_prefix=ENV_PREFIX), "",
        "## `[profiles.NAME]`", "",
        _inline(Profile.__doc__ or ""), "",
        *_table(Profile, _definition(schema, Profile),
                not_in_table=profile_name),
        "",
        "## `[cluster]`", "",
        _inline(ClusterSettings.__doc__ or ""), "",
        "Read only when a profile has `scope = \"cluster\"`; see [Fleet](fleet.md) for the "
        "model and the timing inequality.", "",
        *_table(ClusterSettings, _definition(schema, ClusterSettings)), "",
        "## `[profiles.NAME.probe]`", "",
        "At most one per profile; `kind` picks one of the tables below. What each kind does, "
        "the timings and the placeholders are explained in [Health probes](probes.md).", "",
    ]
    kinds: list[type] = list(get_args(AnyProbe))
    defs = {kind: _definition(schema, kind) for kind in kinds}
    names = [list(kind.model_fields) for kind in kinds]  # type: ignore[attr-defined]
    shared = [n for n in names[0] if n != "kind" and all(
        n in other and defs[k]["properties"][n] == defs[kinds[0]]["properties"][n]
        for other, k in zip(names, kinds, strict=True))]
    if shared:
        out += ["### Every kind", "",
                "Described in [Health probes](probes.md#timings).", "",
                *_table(kinds[0], defs[kinds[0]], only=shared, missing="—"), ""]
    for kind, fields in zip(kinds, names, strict=True):
        const = defs[kind]["properties"]["kind"].get("const", kind.__name__)
        out += [f"### `kind = \"{const}\"`", "", _inline(kind.__doc__ or ""), "",
                *_table(kind, defs[kind], only=[n for n in fields if n not in shared],
                        missing="—"), ""]
    return "\n".join(out).rstrip() + "\n"


def snippets_markdown(readme: str | None = None) -> str:
    """The README's callers' snippets, each under its title."""
    text = readme if readme is not None else (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for name, block in SNIPPET.findall(text):
        out += [f"**{SNIPPET_TITLES.get(name, name)}**:", "", block, ""]
    return "\n".join(out).rstrip() + "\n"


def code_pipes(markdown: str) -> str:
    """In table rows, ``\\|`` inside a code span as ``|``: GitHub needs the escape there,
    Python-Markdown shows it (and splits no cell inside a code span anyway)."""
    def unescape(row: str) -> str:
        parts = row.split("`")
        for i in range(1, len(parts), 2):
            parts[i] = parts[i].replace("\\|", "|")
        return "`".join(parts)

    return "\n".join(unescape(line) if line.startswith("|") else line
                     for line in markdown.split("\n"))


# the MkDocs event --------------------------------------------------------------------------
def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    source = page.file.src_uri
    if source == REFERENCE_PAGE:
        markdown = markdown.replace(REFERENCE_MARK, reference_markdown())
    elif source == CALLERS_PAGE:
        markdown = markdown.replace(SNIPPETS_MARK, snippets_markdown())
    return code_pipes(markdown)
