"""The package's import layering, read from the source with ``ast`` (docs/architecture.md).

Wings, lowest first; a module may import its own wing and the wings below it, never above:

    core < figures < fundus < grader < explain < refinement < lesions < jobs < app

No import circle between modules; no TensorFlow (directly or through another module) in core,
figures, fundus, refinement and lesions (core._tf is the one TensorFlow boundary); lesion
evaluation reads results without the loop or the erase step (of refinement/ it reads only the
store and the result); the library (every wing but app) never imports the command line, and the
package's lazy re-exports (``_EXPORTS`` of dr_saliency/__init__.py, imported by name through
importlib) never name it either; the distributed engine (Dask, an optional extra) is imported
by dr_saliency.jobs.engine alone, inside its functions. Every import counts, also the ones inside
functions.
"""

import ast
import os

import pytest

PACKAGE = "dr_saliency"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

WINGS = ("core", "figures", "fundus", "grader", "explain", "refinement", "lesions", "jobs", "app")
NO_TENSORFLOW = ("core", "figures", "fundus", "refinement", "lesions")
TF_BOUNDARY = "dr_saliency.core._tf"
TENSORFLOW = ("tensorflow", "keras", "tf_keras")
#: Grader modules without TensorFlow: the command line shows config's defaults without it, and
#: the workers of a multi-worker training meet (cluster) before TensorFlow joins them up.
TF_FREE = ("dr_saliency.grader.config", "dr_saliency.grader.cluster")
#: Imports a wing must not make although the ranks allow them: (importer wing, imported module).
FORBIDDEN = (("lesions", "dr_saliency.app"), ("lesions", "dr_saliency.jobs"))
#: What a wing may import of a wing below it, where not all of it (importer wing -> (wing, the
#: modules allowed)): lesion evaluation reads result files, never the loop or the erase step.
ONLY = {"lesions": ("refinement", ("dr_saliency.refinement.store",
                                   "dr_saliency.refinement.result"))}
#: The distributed engine, an optional extra (pip install -e ".[cluster]"): imported by the
#: engine module alone, and there only inside functions, so the package works without it.
ENGINE, ENGINE_MODULE = ("dask", "distributed"), "dr_saliency.jobs.engine"


def exports(path=os.path.join(ROOT, "__init__.py")):
    """The modules the package's top re-exports lazily: the values of its ``_EXPORTS`` dict."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS"
                                                for t in node.targets):
            return set(ast.literal_eval(node.value).values())
    raise AssertionError(f"{path}: no _EXPORTS dict")


def module_files():
    """{module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def imports_of(path, name, modules):
    """The modules ``path`` imports: external top-level names and package modules (resolved to
    the module when ``from package import module`` names one)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return out


def import_graph():
    modules = module_files()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def wing(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS) else "core"


def cycles(graph):
    """Every import circle among the graph's own nodes, as lists of modules (empty: none)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def reaches(graph, start, targets):
    """The chain of imports from ``start`` to a module in ``targets``, or None."""
    seen, stack = {start}, [[start]]
    while stack:
        chain = stack.pop()
        for target in sorted(graph.get(chain[-1], ())):
            if target.split(".")[0] in targets or target in targets:
                return chain + [target]
            if target in graph and target not in seen:
                seen.add(target)
                stack.append(chain + [target])
    return None


def upward_imports(graph):
    bad = []
    for module, targets in graph.items():
        for target in targets:
            if target.startswith(PACKAGE + ".") and target in graph:
                if WINGS.index(wing(target)) > WINGS.index(wing(module)):
                    bad.append(f"{module} -> {target}")
    return sorted(bad)


# ----------------------------------------------------------------------------- the package


def test_every_module_sits_in_a_wing_with_a_docstring():
    graph = import_graph()
    for module in graph:
        assert wing(module) in WINGS, module
    for name in WINGS:
        path = os.path.join(ROOT, name, "__init__.py")
        doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read()))
        assert doc and len(doc.splitlines()) <= 3, f"{name}/__init__.py: state the wing's job"


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_import_against_the_layering():
    assert upward_imports(import_graph()) == []


def test_no_tensorflow_below_the_grader():
    graph = import_graph()
    for module in graph:
        if wing(module) in NO_TENSORFLOW and module != TF_BOUNDARY:
            chain = reaches(graph, module, TENSORFLOW + (TF_BOUNDARY,))
            assert chain is None, " -> ".join(chain)


def test_no_tensorflow_in_the_grader_modules_kept_free_of_it():
    graph = import_graph()
    for module in TF_FREE:
        assert module in graph, module
        chain = reaches(graph, module, TENSORFLOW + (TF_BOUNDARY,))
        assert chain is None, " -> ".join(chain)


def test_the_package_top_re_exports_modules_that_exist_and_never_the_command_line():
    # Imported by name on first use (importlib), so no import statement shows them; the top
    # re-exports the main names of every wing of the library, never the command line's.
    graph = import_graph()
    assert exports() <= set(graph), sorted(exports() - set(graph))
    assert sorted(t for t in exports() if wing(t) == "app") == []


def only_allowed(graph):
    """Imports of a wing restricted by :data:`ONLY` outside what it may import."""
    bad = []
    for module, targets in graph.items():
        rule = ONLY.get(wing(module))
        if rule is None:
            continue
        below, allowed = rule
        bad += [f"{module} -> {t}" for t in sorted(targets)
                if t in graph and wing(t) == below and t not in allowed]
    return bad


def test_lesion_evaluation_reads_only_the_store_and_the_result_of_refinement():
    assert only_allowed(import_graph()) == []


def test_forbidden_imports_and_the_cli():
    graph = import_graph()
    for module, targets in graph.items():
        for importer_wing, forbidden in FORBIDDEN:
            if wing(module) == importer_wing:
                assert not any(t == forbidden or t.startswith(forbidden + ".") for t in targets), \
                    f"{module} imports {forbidden}"
        if wing(module) != "app":
            assert not any(t.startswith("dr_saliency.app") for t in targets), module
        # The executable's entry module imports it to run it (and to end a Ctrl-C during the
        # import with one line).
        if module not in ("dr_saliency.app.cli", "dr_saliency.app.console"):
            assert "dr_saliency.app.cli" not in targets, f"{module} imports the CLI"


def engine_imports(graph, paths):
    """Modules that import the engine although they must not: any but ENGINE_MODULE, and
    ENGINE_MODULE itself at its top level (which would make the extra a requirement)."""
    wrong = [m for m, targets in graph.items() if m != ENGINE_MODULE
             and any(t.split(".")[0] in ENGINE for t in targets)]
    if ENGINE_MODULE in paths:
        tree = ast.parse(open(paths[ENGINE_MODULE], encoding="utf-8").read())
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ENGINE for n in names):
                wrong.append(f"{ENGINE_MODULE} (at its top level)")
    return wrong


def test_the_engine_is_imported_by_its_module_alone_and_only_when_used():
    assert engine_imports(import_graph(), module_files()) == []


# ----------------------------------------------------------------------------- the checks can fail


def test_the_engine_check_finds_an_import_elsewhere_and_at_the_top(tmp_path):
    engine = tmp_path / "engine.py"
    engine.write_text("import os\nimport distributed\n")
    graph = {"dr_saliency.jobs.sharded": {"dask.array"}, ENGINE_MODULE: {"distributed"}}
    assert engine_imports(graph, {ENGINE_MODULE: str(engine)}) == [
        "dr_saliency.jobs.sharded", f"{ENGINE_MODULE} (at its top level)"]
    engine.write_text("def f():\n    import distributed\n")
    assert engine_imports({ENGINE_MODULE: {"distributed"}}, {ENGINE_MODULE: str(engine)}) == []


def test_the_checks_find_a_circle_an_upward_import_and_a_tensorflow_chain():
    graph = {"dr_saliency.fundus.a": {"dr_saliency.fundus.b"},
             "dr_saliency.fundus.b": {"dr_saliency.fundus.a", "dr_saliency.grader.m"},
             "dr_saliency.grader.m": {"tensorflow"}}
    assert cycles(graph) == [["dr_saliency.fundus.a", "dr_saliency.fundus.b",
                              "dr_saliency.fundus.a"]]
    assert upward_imports(graph) == ["dr_saliency.fundus.b -> dr_saliency.grader.m"]
    assert reaches(graph, "dr_saliency.fundus.a", TENSORFLOW) == [
        "dr_saliency.fundus.a", "dr_saliency.fundus.b", "dr_saliency.grader.m", "tensorflow"]
    assert only_allowed({"dr_saliency.lesions.p": {"dr_saliency.refinement.erase",
                                                   "dr_saliency.refinement.store"},
                         "dr_saliency.refinement.erase": set(),
                         "dr_saliency.refinement.store": set()}) == [
        "dr_saliency.lesions.p -> dr_saliency.refinement.erase"]


def test_the_re_exports_are_read(tmp_path):
    path = tmp_path / "__init__.py"
    path.write_text('_EXPORTS = {"main": "dr_saliency.app.cli", "froc": "dr_saliency.lesions.froc"}')
    assert exports(str(path)) == {"dr_saliency.app.cli", "dr_saliency.lesions.froc"}


@pytest.mark.parametrize("source, expected", [
    ("from dr_saliency.fundus import fov", {"dr_saliency.fundus.fov"}),
    ("from dr_saliency.core.maps import Combination", {"dr_saliency.core.maps"}),
    ("def f():\n    import tensorflow as tf", {"tensorflow"}),
    ("from . import maps", {"dr_saliency.core.maps"}),
])
def test_imports_are_resolved_to_modules(tmp_path, source, expected):
    path = tmp_path / "x.py"
    path.write_text(source)
    modules = module_files()
    assert imports_of(str(path), "dr_saliency.core.x", modules) == expected
