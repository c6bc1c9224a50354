"""Structure of the package, read from its source: no import cycle between modules, no private name imported
across modules, no source file over 450 lines, imports that point downward between the layers.

Each check lists every violation (``file:line``) in its failure message. The parsing is static (``ast``): an
import inside a function counts as well, since a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("nngp_gpytorch", "verification")
MAX_LINES = 450
#: the layers, bottom first: a module may import its own layer or one below it (DESIGN.md "imports point downward")
LAYERS = ("arch", "numerics", "duals", "algebra", "kernels", "tensor_programs")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """``(line, imported module, imported names)`` of every import in the module ``name`` (relative resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module, tuple(alias.name for alias in node.names)


def _resolve(module: str, names: tuple[str, ...]) -> list[str]:
    """The package modules an import statement depends on (``from pkg import submodule`` names the submodule)."""
    found = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
    if module in MODULES and len(found) < len(names):
        found.append(module)
    return found


def _graph() -> dict[str, dict[str, int]]:
    graph: dict[str, dict[str, int]] = {name: {} for name in MODULES}
    for name, path in MODULES.items():
        for line, module, names in _imports(name, path):
            for target in _resolve(module, names):
                if target != name:
                    graph[name].setdefault(target, line)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_cycle_edges(component: list[str], graph) -> list[str]:
    members = set(component)
    edges = []
    for v in component:
        for w, line in graph[v].items():
            if w in members and not (w == v.rpartition(".")[0] or v == w.rpartition(".")[0]):
                edges.append(f"{MODULES[v].relative_to(ROOT)}:{line} imports {w}")
    return edges


def test_no_import_cycle_between_modules():
    """Imports between modules (not a package ``__init__`` re-exporting its own submodules, which Python's
    package layout requires) form no cycle."""
    graph = _graph()
    trimmed = {v: {w: line for w, line in edges.items()
                   if not (MODULES[v].name == "__init__.py" and w.startswith(v + "."))
                   and not (MODULES[w].name == "__init__.py" and v.startswith(w + "."))}
               for v, edges in graph.items()}
    problems = [" / ".join(_package_cycle_edges(c, trimmed)) for c in _cycles(trimmed)]
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_no_private_name_imported_across_modules():
    problems = []
    for name, path in MODULES.items():
        for line, module, names in _imports(name, path):
            if module.split(".")[0] not in PACKAGES:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private += [p for p in module.split(".") if p.startswith("_") and not p.startswith("__")]
            if private:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {', '.join(private)} from {module}")
    assert not problems, "private names imported across modules:\n" + "\n".join(problems)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_source_file_over_the_line_limit(package):
    long = [f"{path.relative_to(ROOT)}: {n} lines" for name, path in MODULES.items()
            if name.split(".")[0] == package and (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, f"source files over {MAX_LINES} lines:\n" + "\n".join(long)


def test_imports_point_downward_between_layers():
    """A module of layer L (``nngp_gpytorch.<L>``) imports no module of a layer above L."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    problems = []
    for name, edges in _graph().items():
        parts = name.split(".")
        if parts[0] != "nngp_gpytorch" or len(parts) < 2 or parts[1] not in rank:
            continue
        for target, line in edges.items():
            t = target.split(".")
            if t[0] == "nngp_gpytorch" and len(t) > 1 and t[1] in rank and rank[t[1]] > rank[parts[1]]:
                problems.append(f"{MODULES[name].relative_to(ROOT)}:{line} ({parts[1]}) imports {target} ({t[1]})")
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_the_checks_see_violations():
    """The checks can fail: a planted cycle is found and a private import is recognised."""
    assert _cycles({"a": {"b": 1}, "b": {"a": 2}, "c": {}}) == [["a", "b"]]
    tree = ast.parse("from nngp_gpytorch.kernels.mlp import _hidden")
    node = tree.body[0]
    assert [n for n in (a.name for a in node.names) if n.startswith("_")] == ["_hidden"]


#: the numerical primitives that have one home, :mod:`nngp_gpytorch.numerics`: the calls that build them
NUMERIC_PRIMITIVES = ("SobolEngine(", "hermgauss(", "roots_hermite(", "jitter *= ", "def psd_", "class _SafeSqrt",
                      "(1.0 + torch.erf(x))", "def fix_eigenvector_signs")


def test_numerical_primitives_live_in_numerics():
    """Sobol points, Gauss–Hermite rules, PSD factors, the safe square root and the erf gate are written once
    (``nngp_gpytorch/numerics.py``); every other module imports them. Verification twins included."""
    home = ROOT / "nngp_gpytorch" / "numerics.py"
    problems = [f"{path.relative_to(ROOT)}:{i}: {needle}"
                for path in MODULES.values() if path != home
                for i, line in enumerate(path.read_text().splitlines(), 1)
                for needle in NUMERIC_PRIMITIVES if needle in line and not line.lstrip().startswith("#")]
    assert not problems, "numerical primitives written outside nngp_gpytorch/numerics.py:\n" + "\n".join(problems)


#: arch modules that hold no layer family (the base classes, builders, the dispatch table)
NOT_FAMILIES = {"__init__", "base", "builders", "dispatch"}


def test_family_file_names_are_mirrored():
    """Each layer family has the same file name in ``arch/`` (description), ``algebra/`` (kernel rule) and
    ``verification/twins/`` (finite twin), so a newcomer finds a layer's three readings by name."""
    arch_dir = ROOT / "nngp_gpytorch" / "arch"
    families = sorted(p.stem for p in arch_dir.glob("*.py") if p.stem not in NOT_FAMILIES)
    missing = [f"{where}/{family}.py" for family in families
               for where in ("nngp_gpytorch/algebra", "verification/twins")
               if not (ROOT / where / f"{family}.py").exists()]
    assert not missing, "families without a mirrored file:\n" + "\n".join(missing)


def test_each_layer_has_its_rule_and_twin_in_its_family_files():
    """Every concrete layer class of ``arch/<family>.py`` has its kernel rule in ``algebra/<family>.py`` (or a
    module of that family listed below) and its finite twin in ``verification/twins/<family>.py``."""
    import inspect

    import nngp_gpytorch.arch as arch_package
    from nngp_gpytorch.algebra import rule_for
    from nngp_gpytorch.arch.base import Layer
    from nngp_gpytorch.arch.recurrent import RecurrentLayer
    from verification.twins import twin_for

    cell_modules = {"recurrent": ("recurrent", "gru", "lstm")}
    problems = []
    for name in dir(arch_package):
        cls = getattr(arch_package, name)
        if not (inspect.isclass(cls) and issubclass(cls, Layer)) or cls in (Layer, RecurrentLayer):
            continue  # base classes without layers of their own
        family = cls.__module__.rsplit(".", 1)[-1]
        if family in NOT_FAMILIES:
            family = "structure"  # Serial lives in arch/base.py beside Layer
        rule = _registered(rule_for, cls)
        twin = _registered(twin_for, cls)
        allowed = cell_modules.get(family, (family,))
        if rule is None or rule.__module__.rsplit(".", 1)[-1] not in allowed:
            problems.append(f"{name}: rule in {getattr(rule, '__module__', None)}, expected algebra/{family}.py")
        if twin is None or twin.__module__.rsplit(".", 1)[-1] != family:
            problems.append(f"{name}: twin in {getattr(twin, '__module__', None)}, expected twins/{family}.py")
    assert not problems, "\n".join(problems)


def _registered(lookup, cls):
    """The function ``lookup`` (``rule_for`` / ``twin_for``) dispatches to for layers of class ``cls``, or None."""
    try:
        return lookup(object.__new__(cls))  # dispatch reads only the type; no constructor arguments needed
    except (NotImplementedError, LookupError, AttributeError):
        return None
