"""Import boundaries, read from the source with ``ast`` (docs/design.md "Layout" and principle 1).

Every .py under codecs/ (installed as ``meter.codecs``) and meter/ is parsed, imports inside
functions included. The rules:

- codecs/ imports nothing from ``meter`` but itself;
- ``meter.licensing`` is pure: it imports only itself, ``meter.codecs`` and an explicit list of
  standard-library modules (plus ``cryptography`` to verify option keys), and never reads the
  wall clock;
- ``meter.sip`` and ``meter.h323`` never import each other;
- no import cycle between modules anywhere (a package ``__init__`` importing its own submodules
  is not one).

Each failure names the importing module, the line and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where each top-level package's source lives (pyproject.toml's package-dir).
SOURCES = {"meter": ROOT / "meter", "meter.codecs": ROOT / "codecs"}

# What the licensing domain may import from outside itself: standard-library modules that compute
# and touch no socket, task, file, database or clock.
PURE_STDLIB = frozenset({
    "__future__", "abc", "base64", "bisect", "collections", "dataclasses", "enum", "functools",
    "hashlib", "hmac", "itertools", "json", "math", "operator", "re", "string", "struct",
    "tomllib",   # text in, tables out: parsing only
    "typing",
    "secrets",   # fresh option-key ids (keys.issue_key): randomness, not I/O the node waits on
})
LICENSING_THIRD_PARTY = frozenset({"cryptography"})  # Ed25519 option-key signatures (keys.py)
WALL_CLOCK_CALLS = ("time.time", "time.monotonic", "datetime.now", "datetime.utcnow")


class Import:
    __slots__ = ("importer", "target", "line", "text")

    def __init__(self, importer: str, target: str, line: int, text: str) -> None:
        self.importer, self.target, self.line, self.text = importer, target, line, text

    def __str__(self) -> str:
        return f"{self.importer} (line {self.line}): {self.text}"


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    found = {}
    for top, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join((top, *parts))] = (path, is_package)
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, (path, _) in MODULES.items()}


def _imports(name: str) -> list[Import]:
    """Every import in module ``name``, at any depth, resolved to dotted names. ``from p import x``
    targets the module ``p.x`` when there is one, else ``p``."""
    package = name if MODULES[name][1] else name.rpartition(".")[0]
    found = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno, ast.unparse(node)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the importer's package, one level up per extra dot
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append(Import(name, submodule if submodule in MODULES else source, node.lineno,
                                    ast.unparse(node)))
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _report(problems: list[str], rule: str) -> str:
    return f"{rule}:\n  " + "\n  ".join(problems)


def test_codecs_import_nothing_from_meter():
    """codecs/ is the wire formats alone: it is installed as meter.codecs, and imports only itself."""
    problems = [
        str(imp) for name, found in IMPORTS.items() if _within(name, "meter.codecs") for imp in found
        if _within(imp.target, "meter") and not _within(imp.target, "meter.codecs")
    ]
    assert not problems, _report(problems, "codecs/ must not import from meter/")


def test_licensing_imports_only_itself_codecs_and_pure_modules():
    """meter.licensing is sans-I/O (docs/design.md principle 1): no asyncio, socket, sqlite3, argparse,
    files (but the two shipped tables), and nothing of meter but meter.licensing and meter.codecs."""
    problems = []
    for name, found in IMPORTS.items():
        if not _within(name, "meter.licensing"):
            continue
        allowed = PURE_STDLIB | LICENSING_THIRD_PARTY
        for imp in found:
            if _within(imp.target, "meter"):
                ok = _within(imp.target, "meter.licensing") or _within(imp.target, "meter.codecs")
            else:
                ok = imp.target.partition(".")[0] in allowed
            if not ok:
                problems.append(f"{imp}  ({imp.target} is not allowed in the pure licensing domain)")
    assert not problems, _report(problems, "meter.licensing must stay pure")


def test_licensing_never_reads_the_wall_clock():
    """meter.licensing takes ``now`` as an argument; it never asks a clock."""
    problems = []
    for name, tree in TREES.items():
        if not _within(name, "meter.licensing"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                if called.endswith(WALL_CLOCK_CALLS):
                    problems.append(f"{name} (line {node.lineno}): calls {called}()")
    assert not problems, _report(problems, "meter.licensing must not read the wall clock")


def test_sip_and_h323_never_import_each_other():
    """The two signalling adapters meet only in meter.metering and meter.app."""
    problems = [
        str(imp) for name, found in IMPORTS.items() for imp in found
        if (_within(name, "meter.sip") and _within(imp.target, "meter.h323"))
        or (_within(name, "meter.h323") and _within(imp.target, "meter.sip"))
    ]
    assert not problems, _report(problems, "meter.sip and meter.h323 must not import each other")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or of one that imports itself
    (Tarjan's algorithm, iterative so a deep graph cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        found.append(sorted(component))
    return found


def test_no_import_cycle_between_modules():
    """Every module of meter/ and codecs/ can be understood (and imported) before what imports it."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    lines: dict[tuple[str, str], Import] = {}
    for name, found in IMPORTS.items():
        for imp in found:
            if imp.target not in MODULES or imp.target == name:
                continue
            if MODULES[name][1] and _within(imp.target, name):
                continue  # a package's __init__ importing its own submodules
            graph[name].add(imp.target)
            lines.setdefault((name, imp.target), imp)
    problems = []
    for component in _cycles(graph):
        members = set(component)
        edges = [str(lines[(a, b)]) for a in component for b in sorted(graph[a] & members)]
        problems.append(f"cycle {' <-> '.join(component)}:\n    " + "\n    ".join(edges))
    assert not problems, _report(problems, "import cycles")


def test_the_checks_see_every_module_and_resolve_relative_imports():
    """The rules above are only as good as the module list and the import resolution they read."""
    assert {"meter.licensing.ledger", "meter.codecs.sip", "meter.sip.core", "meter.h323.node",
            "meter.store.licensing", "meter.cluster.redis_pool"} <= set(MODULES)
    ledger = {imp.target for imp in IMPORTS["meter.licensing.ledger"]}
    assert {"meter.licensing.pool", "meter.licensing.refusals", "collections.abc"} <= ledger
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_licensing_never_opens_a_file():
    """Reference data (platforms.toml, devices.toml) reaches the domain as text (meter.catalogs)."""
    problems = [
        f"{name} (line {node.lineno}): calls {ast.unparse(node.func)}()"
        for name, tree in TREES.items() if _within(name, "meter.licensing")
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("open", "io.open")
        or isinstance(node, ast.Call) and ast.unparse(node.func).endswith((".read_text", ".read_bytes", ".open"))
    ]
    assert not problems, _report(problems, "meter.licensing must not read files")
