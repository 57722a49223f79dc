"""The library's import graph, read from the source with `ast`: no import cycles between the
project's own modules, no module using another module's `_`-prefixed (private) names, and Keras
only through its public API (no `keras.src`).

Every import counts, wherever it stands: at the top of a module or inside a function (a lazy
import hides a cycle until the function runs; it does not remove it). Only imports under
`if TYPE_CHECKING:` are left out: they never run. Imports by computed name
(`importlib.import_module(name)`) are not seen.

A package's `__init__` counts as a module of its own, which `import a.b.c` and
`from a.b import c` run before `a.b.c` (as Python does): an import of `bit_tf.models.hub` from
`hub_export.module` is an edge to `bit_tf` and one to `bit_tf.models.hub`. The one exception: an
edge from a module to a package that contains it (`bit_tf.models.layers` -> `bit_tf`). Python always
runs that `__init__` before the module, so such an import adds nothing and is no cycle by itself
(`bit_tf/__init__.py` imports `bit_tf.models.layers`, which does `from bit_tf import fused`). It
does count where the module takes a name that the `__init__` itself defines
(`from bit_tf import create_model` in `bit_tf.models`): that needs the `__init__` to have run to
its end, which a module the `__init__` imports cannot have.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
LIBRARY = ("bit_tf", "hub_export", "bit_cli")
MOST_CYCLES = 100  # listed in a failure; more are counted


@dataclasses.dataclass(frozen=True)
class Edge:
    """`importer` runs `imported` (both project modules), at `path`:`line`."""

    importer: str
    imported: str
    path: str
    line: int
    lazy: bool  # inside a function

    def where(self) -> str:
        return f"{self.path}:{self.line}" + (" (in a function)" if self.lazy else "")


def modules_of(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """{dotted module name: file} of every .py file of `packages` under `root`; a package is
    named by its `__init__.py`."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def run_time_imports(nodes: list[ast.stmt], lazy: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """The Import and ImportFrom nodes among `nodes` and inside them that can run, each with
    whether it stands inside a function; the bodies of `if TYPE_CHECKING:` are skipped."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, lazy
        elif isinstance(node, ast.If) and ast.unparse(node.test).split(".")[-1] == "TYPE_CHECKING":
            yield from run_time_imports(node.orelse, lazy)
        else:
            inside = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from run_time_imports(list(ast.iter_child_nodes(node)), inside)


def imported_modules(
    node: ast.AST, importer: str, is_package: bool, modules: dict[str, Path]
) -> Iterator[str]:
    """The project modules that the import `node` in `importer` runs, by the rule of the module
    docstring (packages containing `importer` left out unless a name of theirs is taken)."""
    if isinstance(node, ast.Import):
        targets = [(alias.name, False) for alias in node.names]
    else:
        package = importer if is_package else importer.rpartition(".")[0]
        if node.level:
            package_parts = package.split(".")
            base = ".".join(package_parts[: len(package_parts) - node.level + 1])
            base = ".".join(filter(None, [base, node.module]))
        else:
            base = node.module
        targets = []
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            # `from package import submodule` runs the submodule; any other name is the
            # package's own, which needs the package's __init__ to have run.
            targets.append((submodule, False) if submodule in modules else (base, True))
    for target, takes_a_name in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            module = ".".join(parts[:end])
            if module not in modules or module == importer:
                continue
            contains_importer = importer.startswith(module + ".")
            if contains_importer and not (takes_a_name and module == target):
                continue
            yield module


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, Edge]]:
    """{importer: {imported: the first Edge between them}} over the project's modules."""
    modules = modules_of(root, packages)
    graph: dict[str, dict[str, Edge]] = {name: {} for name in modules}
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, lazy in run_time_imports(tree.body):
            for imported in imported_modules(node, importer, is_package, modules):
                where = str(path.relative_to(root))
                graph[importer].setdefault(
                    imported, Edge(importer, imported, where, node.lineno, lazy)
                )
    return graph


def cycles(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """The elementary cycles of `graph`, each as [a, b, ..., a] starting at its least module,
    in order; at most MOST_CYCLES + 1 of them."""
    importers: dict[str, set[str]] = {name: set() for name in graph}
    for importer, imported in graph.items():
        for name in imported:
            importers[name].add(importer)
    found: list[list[str]] = []
    for start in sorted(graph):
        # Only modules that lead back to `start` can be on a cycle through it.
        leads_back, frontier = set(), [start]
        while frontier:
            for importer in importers[frontier.pop()] - leads_back:
                leads_back.add(importer)
                frontier.append(importer)

        def extend(path: list[str], leads_back: set[str] = leads_back) -> None:
            for imported in sorted(graph[path[-1]].keys() & leads_back):
                if len(found) > MOST_CYCLES:
                    return
                if imported == path[0]:
                    found.append([*path, imported])
                elif imported > path[0] and imported not in path:
                    extend([*path, imported])

        extend([start])
    return found


def describe(cycle: list[str], graph: dict[str, dict[str, Edge]]) -> str:
    """'a -> b -> a', then where each import stands."""
    sites = [graph[importer][imported] for importer, imported in itertools.pairwise(cycle)]
    lines = [" -> ".join(cycle)]
    lines += [f"    {edge.importer} -> {edge.imported}: {edge.where()}" for edge in sites]
    return "\n".join(lines)


def keras_src_uses(path: Path, root: Path = REPOSITORY) -> Iterator[str]:
    """'file:line: code' for each use of Keras' private `keras.src` in the module at `path`:
    imports of it (also under TYPE_CHECKING), `keras.src.…` attributes, and its name given to
    importlib.import_module or __import__."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            if ast.unparse(node.func).endswith(("import_module", "__import__")):
                names = [str(node.args[0].value)]
        if any(name == "keras.src" or name.startswith("keras.src.") for name in names):
            line = path.read_text().splitlines()[node.lineno - 1].strip()
            yield f"{path.relative_to(root)}:{node.lineno}: {line}"


def is_private(name: str) -> bool:
    """`_name`, not `__dunder__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_name_uses(path: Path, modules: dict[str, Path], root: Path = REPOSITORY) -> list[str]:
    """'file:line: module._name' for each private name of another project module that the
    module at `path` takes: `from module import _name`, or `module._name` of a module it
    imported (`import a.b`, `import a.b as c`, `from a import b`). Private modules themselves
    (`from bit_tf._aliases import MOVED`) are not names taken, and `__dunder__` names are public.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    bound: dict[str, str] = {}  # a name in this module -> the project module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in (name.split(".")[0] for name in modules):
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        parts = alias.name.split(".")
                        for end in range(1, len(parts) + 1):
                            bound[".".join(parts[:end])] = ".".join(parts[:end])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif node.module in modules and is_private(alias.name):
                    found.append(
                        f"{path.relative_to(root)}:{node.lineno}: {node.module}.{alias.name}"
                    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = bound.get(ast.unparse(node.value))
            if owner is not None and owner in modules:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {owner}.{node.attr}")
    return sorted(set(found))


def test_the_graph_sees_lazy_imports_and_from_package_import_submodule(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    files = {
        # The package's __init__ imports its submodules, which import from the package: no cycle.
        "__init__.py": "from toy import first\nfrom toy.first import run\nfrom . import helper\n",
        "first.py": "import toy\n\ndef run():\n    from toy import second\n    return second\n",
        "second.py": "from toy.first import run\n",  # back to first: a cycle, lazily
        "helper.py": "import typing\nif typing.TYPE_CHECKING:\n    from toy import second\n",
        "reader.py": "from toy import VERSION\n",  # a name of the __init__ ...
    }
    files["__init__.py"] += "from toy import reader\nVERSION = 1\n"  # ... which imports it
    for name, text in files.items():
        (package / name).write_text(text)
    graph = import_graph(tmp_path, ("toy",))
    assert [" -> ".join(cycle) for cycle in cycles(graph)] == [
        "toy -> toy.reader -> toy",
        "toy.first -> toy.second -> toy.first",
    ]
    assert graph["toy.first"]["toy.second"].lazy
    assert "toy.second" not in graph["toy.helper"]  # under TYPE_CHECKING


def test_every_form_of_keras_src_is_seen(tmp_path):
    forms = [
        "import keras.src.saving",
        "from keras.src import ops",
        "from keras import src",
        "import keras\nkeras.src.saving.serialize_keras_object",
        "def f():\n    import importlib\n    return importlib.import_module('keras.src.ops')",
    ]
    for number, code in enumerate(forms):
        path = tmp_path / f"module_{number}.py"
        path.write_text(f"import keras\n{code}\n")
        assert list(keras_src_uses(path, tmp_path)), code
    public = tmp_path / "public.py"
    public.write_text("import keras\nfrom keras import ops, saving\nkeras.saving.load_model\n")
    assert not list(keras_src_uses(public, tmp_path))


def test_every_form_of_taking_a_private_name_is_seen(tmp_path):
    package = tmp_path / "toy"
    package.mkdir()
    files = {
        "__init__.py": "from toy._hidden import VISIBLE\n",  # a private module's public name
        "_hidden.py": "VISIBLE = 1\n",
        "owner.py": "_secret = 1\n__version__ = '1'\n\ndef _helper():\n    return 2\n",
        "by_from.py": "from toy.owner import _helper\n",
        "by_import.py": "import toy.owner\n\nx = toy.owner._secret\n",
        "by_alias.py": "import toy.owner as o\n\ndef f():\n    return o._helper()\n",
        "by_module.py": "from toy import owner\n\nx = owner._secret\ny = owner.__version__\n",
        "own.py": "_mine = 1\n\nclass A:\n    _field = 2\n\nx = A._field + _mine\n",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    modules = modules_of(tmp_path, ("toy",))
    uses = {
        name: private_name_uses(package / name, modules, tmp_path)
        for name in files
        if private_name_uses(package / name, modules, tmp_path)
    }
    assert uses == {
        "by_from.py": ["toy/by_from.py:1: toy.owner._helper"],
        "by_import.py": ["toy/by_import.py:3: toy.owner._secret"],
        "by_alias.py": ["toy/by_alias.py:4: toy.owner._helper"],
        "by_module.py": ["toy/by_module.py:3: toy.owner._secret"],
    }


def test_no_module_takes_another_modules_private_names():
    modules = modules_of(REPOSITORY, LIBRARY)
    uses = [use for path in modules.values() for use in private_name_uses(path, modules)]
    assert not uses, (
        "Private names of other modules (make the name public, or move the code to the module "
        "that owns it):\n" + "\n".join(uses)
    )


def test_no_import_cycles_between_the_librarys_modules():
    graph = import_graph(REPOSITORY, LIBRARY)
    found = cycles(graph)
    listed = "\n".join(describe(cycle, graph) for cycle in found[:MOST_CYCLES])
    more = (
        f"\n(and more: only the first {MOST_CYCLES} are listed)" if len(found) > MOST_CYCLES else ""
    )
    assert not found, f"{len(found)} import cycle(s):\n{listed}{more}"


def test_keras_only_through_its_public_api():
    uses = [
        use
        for package in LIBRARY
        for path in sorted((REPOSITORY / package).rglob("*.py"))
        for use in keras_src_uses(path)
    ]
    assert not uses, "keras.src is Keras' private code; use the public API:\n" + "\n".join(uses)
