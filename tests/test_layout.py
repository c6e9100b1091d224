"""The tree tells the architecture, and the words about it stay true.

Each folder of the package is one kind of part (README, "Layout"); these tests keep it so:
no two modules share a name, the package root stays small, no import circle forms, the
README's module map is the tree, and every file a comment or a document cites exists.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workerguard"

ROOT_MODULES = {
    "__init__": "the version",
    "errors": "one root for everything workerguard raises, imported by every folder",
    "redact": "secrets out of logs and reprs, used by config, the CLI and the Celery edge alike",
    "client": "the callers' API (`workerguard.client`): send a request, wait for its answer",
    "timing": "every polling interval and shared bound, named once with why",
}
"""The modules allowed at the package root, each with the reason it is not in a folder."""


def _modules(package: Path) -> dict[str, Path]:
    base = package.parent
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file (lazy imports and
    ``TYPE_CHECKING`` blocks too: a circle through them is still a circle of the design),
    with the packages whose ``__init__`` an import runs."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            prefix = ".".join(parts[:i])
            if prefix in known and prefix != name and not name.startswith(prefix + "."):
                edges.add(prefix)
    return edges


def _circles(package: Path) -> list[list[str]]:
    modules = _modules(package)
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    circles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                circles.append([*path[path.index(nxt):], nxt])
            elif state[nxt] == 0:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node)
    return circles


def test_no_two_package_modules_share_a_basename():
    by_name = defaultdict(list)
    for path in PACKAGE.rglob("*.py"):
        if path.name not in ("__init__.py", "__main__.py"):
            by_name[path.stem].append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}


def test_the_package_root_holds_only_the_allowed_modules():
    at_root = {path.stem for path in PACKAGE.glob("*.py")}
    assert at_root <= set(ROOT_MODULES), f"not allowed at the package root: {at_root - set(ROOT_MODULES)}"
    assert len(at_root - {"__init__"}) <= 5


@pytest.mark.parametrize("package", ["workerguard", "benchmarks"])
def test_no_import_circle(package):
    assert _circles(ROOT / package) == []


def test_the_circle_finder_finds_a_circle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.b import x\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nx = 1\n")
    assert _circles(pkg) == [["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.a"]]


# the README's module map ----------------------------------------------------------------
MAP_LINE = re.compile(r"^  (?P<folder>[a-z_]+/|\(root\))\s+(?P<modules>[a-z_ ]+?)\s+—")


def _readme_map() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- module map -->", 2)
    assert len(block) == 3, "README.md: the module map sits between two <!-- module map --> marks"
    found = {}
    for line in block[1].splitlines():
        match = MAP_LINE.match(line)
        if match:
            folder = "" if match["folder"] == "(root)" else match["folder"].rstrip("/")
            found[folder] = set(match["modules"].split())
    return found


def _tree() -> dict[str, set[str]]:
    tree: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        folder = path.parent.relative_to(PACKAGE).as_posix()
        tree["" if folder == "." else folder].add(path.stem)
    return dict(tree)


def test_the_readme_module_map_is_the_tree():
    assert _readme_map() == _tree()


# cited files exist -----------------------------------------------------------------------
CITED = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:py|md|toml|yml|yaml|cfg|txt|sh|ps1))(?![\w/])"
                   r"|(?<![\w./-])((?:benchmarks|docs|tests|examples|workerguard|\.ci)/[\w./-]*\w)")
ELSEWHERE = ("kombu/", "celery/", "redis_lock", "circus/", "dramatiq/", "supervisor/", "rq/", "arq/",
             "redbeat/", "site-packages/", "pydantic", "systemd/", "psutil/", "flower/")
"""Paths inside other projects that the code cites as their sources."""
NOT_IN_THIS_TREE = {
    "ensure_rpa_worker.ps1",  # the script workerguard replaces
    "constants.py",  # arq's
    "wg.toml",  # the config file of an example, in a docstring
}


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if (ROOT / line).exists()]


def _prose(path: Path) -> list[tuple[int, str]]:
    """The lines a reader reads as words: all of a document; a module's comments and
    docstrings (its string literals are data, such as a test's file names)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        return list(enumerate(text.splitlines(), 1))
    lines = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            lines += [(node.lineno + i, line) for i, line in enumerate(node.value.value.splitlines())]
    return lines


def _exists(cited: str, citing: str, files: list[str]) -> bool:
    cited = cited.rstrip("/.")
    candidates = [cited, f"workerguard/{cited}", str(Path(citing).parent / cited)]
    if any((ROOT / c).exists() for c in candidates):
        return True
    return any(f == cited or f.endswith("/" + cited) for f in files)


def test_every_file_cited_in_code_and_docs_exists():
    files = _tracked()
    texts = [f for f in files if f.endswith((".py", ".md", ".toml", ".yml", ".cfg"))
             or f.startswith(".ci/") or f == "Dockerfile"]
    missing = []
    for name in texts:
        for number, line in _prose(ROOT / name):
            for match in CITED.finditer(line):
                cited = match.group(1) or match.group(2)
                if cited in NOT_IN_THIS_TREE or cited.startswith(ELSEWHERE) or "…" in cited:
                    continue
                if not _exists(cited, name, files):
                    missing.append(f"{name}:{number}: {cited}")
    assert missing == []


def test_a_citation_of_a_missing_file_is_found(tmp_path):
    cited = tmp_path / "cites.py"
    cited.write_text('"""See docs/nowhere.md."""\n# and tests/test_layout.py\nx = "data.toml"\n')
    found = [m.group(1) or m.group(2) for _, line in _prose(cited) for m in CITED.finditer(line)]
    assert found == ["tests/test_layout.py", "docs/nowhere.md"]
    assert not _exists("docs/nowhere.md", "cites.py", _tracked())
    assert _exists("tests/test_layout.py", "cites.py", _tracked())
