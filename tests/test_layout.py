"""The package layout rules of docs/architecture.md, checked on the source's import statements.

The root holds only cli, configs, checks and errors beside the packages; every package imports only what sits on
its own layer or below (`LAYERS`); no two modules import each other, however far round; `rewards/verifiers/` holds
exactly the modules that register a built-in verifier; `rewards` never reaches `server` (the server builds on
rewards, not the reverse) and `monitoring` never reaches `data` or `trainer` (it computes metrics from what the
trainer hands it). Imports are followed transitively, including the ones inside functions, so a lazy import cannot
hide a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

import triune_trl
from triune_trl.rewards import available_verifiers, get_verifier

PACKAGE_DIR = Path(triune_trl.__file__).resolve().parent


def _module_file(module: str) -> Path | None:
    """The source file of `triune_trl...` module `module`, or None when it is not one of ours."""
    parts = module.split(".")
    if parts[0] != "triune_trl":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a, a.b and a.b.c."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _import_statements(module: str) -> Iterator[tuple[str, list[str]]]:
    """(imported module, names imported from it) for every import statement of `module`'s source, anywhere in the
    file, relative imports resolved; `import a.b` gives ("a.b", [])."""
    path = _module_file(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base, [alias.name for alias in node.names]


def _submodules(base: str, names: list[str]) -> list[str]:
    return [f"{base}.{name}" for name in names if _module_file(f"{base}.{name}")]


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every triune_trl module `module`'s source imports, anywhere in the file, parent packages included."""
    found: set[str] = set()
    for base, names in _import_statements(module):
        # `from pkg import name` imports pkg, and pkg.name too when that is a module
        for target in [base, *_submodules(base, names)]:
            found.update(name for name in _with_parents(target) if _module_file(name))
    found.discard(module)
    return frozenset(found)


def reachable(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for imported in direct_imports(current):
            if imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def package_modules(package: str) -> list[str]:
    folder = PACKAGE_DIR.joinpath(*package.split(".")[1:])
    return sorted(_module_name(path) for path in folder.rglob("*.py"))


# bottom to top; a module may import what is on its own layer or below (docs/architecture.md draws the same)
LAYERS = (
    ("errors",),
    ("rewards",),
    ("data", "monitoring"),
    ("server", "checks"),
    ("configs",),
    ("models", "generation"),
    ("trainer",),
    ("runs",),
    ("cli",),
)
LAYER_OF = {part: level for level, parts in enumerate(LAYERS) for part in parts}
ROOT_MODULES = {"cli", "configs", "checks", "errors"}


def _part(module: str) -> str:
    """The root module or package a `triune_trl...` module belongs to."""
    return module.split(".")[1]


def explicit_imports(module: str) -> frozenset[str]:
    """The triune_trl modules `module` names in its imports, without the parent packages Python runs on the way
    (`from triune_trl.data import formats` names data.formats, not data/__init__)."""
    found: set[str] = set()
    for base, names in _import_statements(module):
        submodules = _submodules(base, names)
        targets = submodules if names and len(submodules) == len(names) else [base, *submodules]
        found.update(target for target in targets if _module_file(target))
    found.discard(module)
    return frozenset(found)


def all_modules() -> list[str]:
    return sorted(_module_name(path) for path in PACKAGE_DIR.rglob("*.py"))


def test_root_holds_only_the_shared_modules_beside_the_packages():
    loose = {path.stem for path in PACKAGE_DIR.glob("*.py")} - {"__init__"}
    assert loose == ROOT_MODULES
    packages = {path.name for path in PACKAGE_DIR.iterdir() if (path / "__init__.py").is_file()}
    assert packages == set(LAYER_OF) - ROOT_MODULES


def test_every_package_opens_with_what_it_is_for_and_what_it_may_import():
    for package in set(LAYER_OF) - ROOT_MODULES:
        doc = ast.get_docstring(ast.parse((PACKAGE_DIR / package / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "May import:" in doc, package


def test_no_module_imports_a_layer_above_its_own():
    offenders = sorted(
        (module, imported)
        for module in all_modules()
        if module != "triune_trl"
        for imported in direct_imports(module)
        if imported != "triune_trl" and LAYER_OF[_part(imported)] > LAYER_OF[_part(module)]
    )
    assert not offenders, offenders


def test_no_two_modules_import_each_other():
    graph = {module: explicit_imports(module) for module in all_modules()}

    def reached_from(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for imported in graph[todo.pop()]:
                if imported not in seen:
                    seen.add(imported)
                    todo.append(imported)
        return seen

    reach = {module: reached_from(module) for module in graph}
    cycles = sorted((a, b) for a in graph for b in reach[a] if a < b and a in reach[b])
    assert not cycles, cycles


def test_old_module_paths_resolve_to_the_moved_modules():
    import importlib
    import warnings

    from triune_trl.models import prefill

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("triune_trl.prefill")
    assert old is prefill and old.__spec__.name == "triune_trl.models.prefill"
    assert any("moved to triune_trl.models.prefill" in str(w.message) for w in caught)


def _registers_a_verifier(path: Path) -> bool:
    """Whether a class in `path` is decorated with `@register_verifier(...)`."""
    return any(
        isinstance(node, ast.ClassDef)
        and any(
            isinstance(deco, ast.Call)
            and getattr(deco.func, "id", getattr(deco.func, "attr", None)) == "register_verifier"
            for deco in node.decorator_list
        )
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
    )


def test_verifiers_folder_holds_exactly_the_registered_verifier_modules():
    registered = {type(get_verifier(name)).__module__ for name in available_verifiers() if not name.startswith("test_")}
    in_folder = set(package_modules("triune_trl.rewards.verifiers")) - {"triune_trl.rewards.verifiers"}
    assert in_folder == registered
    # and no verifier is registered from anywhere else in the package
    registering = {_module_name(path) for path in PACKAGE_DIR.rglob("*.py") if _registers_a_verifier(path)}
    assert registering == registered


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("triune_trl.rewards", ("triune_trl.server",)),
        ("triune_trl.monitoring", ("triune_trl.data", "triune_trl.trainer")),
    ],
)
def test_package_never_reaches_forbidden_modules(package, forbidden):
    offenders = {
        (module, reached)
        for module in package_modules(package)
        for reached in reachable(module)
        if any(reached == name or reached.startswith(name + ".") for name in forbidden)
    }
    assert not offenders, f"{package} imports {sorted(offenders)}"


def test_import_graph_sees_lazy_and_relative_imports():
    """The checker itself: the moved modules' known dependencies are found (a checker that finds nothing passes
    every rule)."""
    assert "triune_trl.server.client" in direct_imports("triune_trl.runs.score_file")  # lazy, inside a function
    assert {"triune_trl.data", "triune_trl.trainer"} <= direct_imports("triune_trl.runs.evaluate")  # relative, lazy
    assert "triune_trl.rewards.verifiers.mathverify" in reachable("triune_trl.rewards.router")
