"""The package's shape, checked: sizes, one-way imports, one owner per concern.

Read from the source with ``ast`` (nothing is imported), so a breach names the file,
the line and the rule. The layers and their reasons are in ``../shared/STYLE.md`` and
the README's "Development" section.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featurecache"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_CLI_SHARE = 0.10

#: Layer of each module (longest matching prefix). A module may import modules of a
#: lower layer, and modules of its own layer inside its own package; never upwards.
LAYERS = {
    "featurecache.errors": 0,
    "featurecache.quiet": 0,
    "featurecache.hashing": 0,
    "featurecache.config": 1,
    "featurecache.images": 1,
    "featurecache.deps": 1,
    "featurecache.stopping": 1,
    "featurecache.datasets": 2,
    "featurecache.backbones": 2,
    "featurecache.cache": 2,
    "featurecache.heads": 2,
    "featurecache.runs": 2,
    "featurecache.metrics": 2,
    "featurecache.plots": 2,
    "featurecache.cache.admin": 3,
    "featurecache.extraction": 3,
    "featurecache.heads.freshness": 3,
    "featurecache.heads.train": 3,
    "featurecache.finetuning": 3,
    "featurecache.reporting": 3,
    "featurecache.auditing": 3,
    "featurecache.prediction": 3,
    "featurecache.workflow": 4,
    "featurecache.api": 5,
    "featurecache.cli": 6,
    "featurecache": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports(module: str) -> Iterator[tuple[str, int]]:
    """``(imported featurecache module, line)`` for every import in ``module``, at any depth."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                yield (target if target in MODULES else node.module), node.lineno


def internal_imports(module: str) -> list[tuple[str, int]]:
    return [(t, line) for t, line in imports(module) if t in MODULES]


def test_every_module_is_at_most_400_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_function_is_at_most_60_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_command_line_is_under_a_tenth_of_the_package():
    lines = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    cli = sum(n for m, n in lines.items() if package(m) == "featurecache.cli")
    assert cli / sum(lines.values()) < MAX_CLI_SHARE, (cli, sum(lines.values()))


def test_every_module_has_a_layer():
    for module in MODULES:
        assert layer(module) >= 0


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    """cli -> workflow -> stages -> (cache, backbones, heads, datasets, runs) -> config."""
    wrong = [
        f"line {line}: {module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for target, line in internal_imports(module)
        if layer(target) > layer(module)
        or (layer(target) == layer(module) and package(target) != package(module))
    ]
    assert not wrong, wrong


def test_there_is_no_import_cycle():
    graph = {m: {t for t, _ in internal_imports(m) if t != m} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_only_the_store_imports_zarr():
    users = {m for m in MODULES for t, _ in imports(m) if t.split(".")[0] == "zarr"}
    assert users == {"featurecache.cache.store"}


def test_keras_and_its_backends_are_never_imported_at_module_level():
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            heavy = [n for n in names if n.split(".")[0] in ("tensorflow", "keras", "jax", "torch")]
            assert not heavy, f"{module}:{node.lineno} imports {heavy} at module level"


def test_only_the_command_line_prints():
    for module, path in MODULES.items():
        if package(module) == "featurecache.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                pytest.fail(f"{module}:{node.lineno} prints; library code logs")


def test_the_command_line_calls_the_public_api_only():
    """Every featurecache module the CLI imports is the API, the errors it turns into exit
    codes, or the CLI itself (``featurecache.cli.*``)."""
    allowed = {"featurecache.api", "featurecache.errors"}
    wrong = [
        f"{module}:{line} imports {target}"
        for module in MODULES
        if package(module) == "featurecache.cli"
        for target, line in internal_imports(module)
        if target not in allowed and package(target) != "featurecache.cli"
    ]
    assert not wrong, wrong


def test_no_submodule_shadows_a_public_api_name():
    """Importing ``featurecache.x`` sets the package attribute ``x`` to the module, which
    would hide an API function of the same name (``featurecache.finetune(...)``)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    api = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_API"
    )
    children = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert not children & set(api), children & set(api)


#: The one function per library allowed to import that library's private modules: each
#: says in its docstring which version it was written against, and has a test.
PRIVATE_USES = {
    "keras.src": ("featurecache.backbones.build", "recording_weight_downloads"),
    "keras_hub.src": ("featurecache.backbones.hub", "downloaded_preset_folder"),
    "zarr.core": ("featurecache.cache.store", "_store_sync"),
}


def private_imports(module: str) -> Iterator[tuple[str, str | None, int]]:
    """``(imported name, enclosing function or None, line)`` for every import of a
    dependency's private module (``keras.src``, ``zarr.core``, ``sklearn.x._y``...)."""
    tree = ast.parse(MODULES[module].read_text())
    owner: dict[ast.AST, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                owner.setdefault(inner, node.name)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            private = any(name.startswith(p + ".") for p in PRIVATE_USES) or (
                parts[0] == "sklearn" and any(p.startswith("_") for p in parts[1:])
            )
            if private:
                yield name, owner.get(node), node.lineno


def test_private_modules_of_dependencies_are_used_in_one_function_each():
    found = {
        (name, module, function, line)
        for module in MODULES
        for name, function, line in private_imports(module)
    }
    wrong = [
        f"{module}:{line} {function or '<module>'} imports {name}"
        for name, module, function, line in found
        if not any(
            name.startswith(prefix + ".") and (module, function) == allowed
            for prefix, allowed in PRIVATE_USES.items()
        )
    ]
    assert not wrong, wrong
    for module, function in PRIVATE_USES.values():
        source = MODULES[module].read_text()
        tree = ast.parse(source)
        node = next(n for n in ast.walk(tree) if getattr(n, "name", None) == function)
        doc = ast.get_docstring(node) or ""
        assert re.search(r"\d+\.\d+", doc), f"{module}.{function}: name the version"


#: Private methods of dependencies' objects called by featurecache: each from one
#: function, which names the version it was written against and has a test.
PRIVATE_CALLS = {"_validate_params": ("featurecache.heads.estimators", "_sklearn_check_params")}


def test_private_methods_of_dependencies_are_called_from_one_function_each():
    wrong = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                name = getattr(node, "attr", None)
                if name in PRIVATE_CALLS and PRIVATE_CALLS[name] != (module, func.name):
                    wrong.append(f"{module}:{node.lineno} {func.name} calls {name}")
    assert not wrong, wrong
