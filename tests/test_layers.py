"""The package's modules import in one direction: no cycle, function-level imports included,
and the plan and the runner load without the book's plotting stack."""
from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "src" / "resnet_cifar"


def imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its source (relative imports)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
        graph[path.stem] = found - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None
    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    graph = imports()
    assert {"plan", "book", "records", "runs", "config"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_plan_and_runner_do_not_import_the_plotting_stack():
    code = ("import sys; import resnet_cifar.plan, resnet_cifar.runner, resnet_cifar.commands, resnet_cifar.cli; "
            "print(sorted(m for m in ('matplotlib', 'resnet_cifar.book', 'resnet_cifar.analysis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_every_module_imports():
    """What one module imports from another exists there (a name moved away fails here first)."""
    code = ("import importlib, pkgutil, resnet_cifar; [importlib.import_module(m.name) for m in "
            "pkgutil.walk_packages(resnet_cifar.__path__, 'resnet_cifar.') if not m.name.endswith('__main__')]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- names the docs point at

MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__"))
# `module.name` in backticks, or resnet_cifar.module.name anywhere, then an optional .attribute
REFERENCE = re.compile(rf"(?:resnet_cifar\.|`)({'|'.join(MODULES)})\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
FILE_TYPES = {"py", "json", "csv", "ipynb", "pt", "md", "log", "txt", "yml", "sh"}  # config.json is a file


def defined_names(module: str) -> set[str]:
    """The names a module defines at its top level (def, class, assignment), not those it imports."""
    names = set()
    for node in ast.parse((PACKAGE / f"{module}.py").read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def doc_texts() -> list[tuple[str, str]]:
    """(where, text): README.md, the manual page, the library's source (its docstrings, comments and captions), and
    the markdown cells of the book's pages."""
    texts = [(p.name, p.read_text()) for p in (ROOT / "README.md", MANUAL)]
    texts += [(p.relative_to(ROOT).as_posix(), p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]
    for page in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(page.read_text())["cells"]
        texts += [(page.name, "".join(c["source"])) for c in cells if c["cell_type"] == "markdown"]
    return texts


def wrong_references(texts) -> list[str]:
    """References of `texts` to a library name that is not defined in the module they name
    (one hop from the text to the code), or to an attribute that name does not have."""
    wrong = []
    for where, text in texts:
        for module, name, attribute in REFERENCE.findall(text):
            if name in FILE_TYPES:
                continue
            if name not in defined_names(module):
                wrong.append(f"{where}: {module}.{name} is not defined in {module}.py")
            elif attribute and not hasattr(getattr(importlib.import_module(f"resnet_cifar.{module}"), name),
                                           attribute):
                wrong.append(f"{where}: {module}.{name} has no attribute {attribute}")
    return wrong


def test_the_reference_check_finds_a_name_in_the_wrong_module():
    assert wrong_references([("t", "`train.TrainConfig`, resnet_cifar.config.TrainConfig.identity")]) == [
        "t: train.TrainConfig is not defined in train.py"]
    assert wrong_references([("t", "`book.Chapter.run`")]) == ["t: book.Chapter has no attribute run"]


def test_the_docs_name_each_function_where_it_is_defined():
    assert wrong_references(doc_texts()) == []


# ---------------------------------------------------------------- the manual's library map and layer order

MANUAL = ROOT / "book" / "manual.md"  # the book's page "Using and extending this book"
MAX_LINES = 500  # fewer, larger modules: a cap against sprawl, not a shape to fill


def readme_layers(text: str) -> list[list[list[str]]]:
    """The manual's "Imports run one way: ..." sentence as chains (joined by ", and ") of layers
    (joined by →) of modules (joined by commas); its parentheses are asides, not layers."""
    sentence = text.split("Imports run one way:", 1)[1].split(". ", 1)[0]
    sentence = re.sub(r"\([^)]*\)", "", " ".join(sentence.split()))
    return [[[m.strip() for m in layer.split(",") if m.strip() and not m.strip().endswith("/")]
             for layer in chain.split("→")] for chain in sentence.split(", and ")]


def upward_imports(text: str, graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module written in `text`'s order of a module written after it in its chain."""
    wrong = []
    for chain in readme_layers(text):
        for i, layer in enumerate(chain):
            later = {m for after in chain[i + 1:] for m in after}
            wrong += [f"{m} imports {', '.join(sorted(graph.get(m, set()) & later))}" for m in layer
                      if graph.get(m, set()) & later]
    return wrong


def test_the_layer_check_finds_an_import_against_the_order():
    text = "Imports run one way: a, b → c (d beside them) → e, and f → g. Other text."
    assert readme_layers(text) == [[["a", "b"], ["c"], ["e"]], [["f"], ["g"]]]
    assert upward_imports(text, {"a": {"e"}, "c": {"a"}, "f": {"g"}}) == ["a imports e", "f imports g"]
    assert upward_imports(text, {"e": {"a", "c"}, "g": {"f"}, "b": {"a"}}) == []


def test_imports_follow_the_order_the_manual_writes():
    graph = imports()
    text = MANUAL.read_text()
    written = {m for chain in readme_layers(text) for layer in chain for m in layer}
    assert {"models", "config", "runs", "train", "plan", "cli", "book"} <= written
    assert written <= set(graph), f"the manual's order names no such module: {sorted(written - set(graph))}"
    assert upward_imports(text, graph) == []


def test_the_manuals_map_names_every_module_and_no_file_is_over_the_line_cap():
    block = MANUAL.read_text().split("## The library", 1)[1].split("```", 2)[1]
    mapped = set(re.findall(r"^  (\w+\.py|\w+/)", block, flags=re.M))
    files = {p.name for p in PACKAGE.glob("*.py") if not p.stem.startswith("__")}
    assert mapped == files, f"the manual's map lacks {sorted(files - mapped)}, names {sorted(mapped - files)}"
    long = {p.relative_to(PACKAGE).as_posix(): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"files over {MAX_LINES} lines: {long}"
