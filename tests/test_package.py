"""The package's shape: every import points one way, the API matches the CLI, one owner per idea."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import headstart

SRC = Path(headstart.__file__).parent


def _name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(SRC.rglob("*.py"))}

# The layers, bottom up: a module may import its own layer and the layers below, never one above.
LAYERS = [
    ("headstart._version", "headstart.errors", "headstart.utils"),
    ("headstart.checks", "headstart.config", "headstart.reporting"),
    ("headstart.data", "headstart.engines"),
    ("headstart.models",),
    ("headstart.advice", "headstart.runs", "headstart.preparing"),
    ("headstart.inference",),
    ("headstart.evaluation",),
    ("headstart.training",),
    ("headstart.comparison", "headstart.auditing"),
    ("headstart.cli",),
    ("headstart.__main__", "headstart.backbones"),  # the command; 0.1.0's import path, kept for users' scripts
]


def _layer(module: str) -> int:
    """The layer of a module: the first table entry that is the module or a package above it."""
    for i, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS: add it to the table")


def _imports(path: Path) -> set[str]:
    """Every headstart module that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from headstart.models import strategies` imports the module headstart.models.strategies
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        found |= {n for n in names if n in MODULES}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_every_module_has_a_layer_and_the_facade_is_on_top():
    assert all(_layer(m) >= 0 for m in MODULES if m != "headstart")
    assert not any(
        "headstart" in _imports(p) for m, p in MODULES.items() if m != "headstart"
    )  # nothing imports the facade


def test_the_layer_check_sees_an_upward_import():
    assert _layer("headstart.data.cache") < _layer("headstart.training.fit")
    assert _layer("headstart.utils.files") == _layer("headstart.errors")


def test_imports_point_down_the_layers_function_level_imports_included():
    upward = sorted(
        f"{m} -> {d}"
        for m, p in MODULES.items()
        if m != "headstart"
        for d in _imports(p)
        if d != "headstart" and _layer(d) > _layer(m)
    )
    assert upward == []


def test_no_import_cycle_between_modules_function_level_imports_included():
    graph = {name: _imports(path) - {name} for name, path in MODULES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_import_headstart_is_light():
    code = (
        "import sys, headstart; print(sorted(m for m in ('torch', 'lightning', 'timm', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", headstart.__all__)
def test_the_api_names_resolve_even_after_every_module_was_imported(name):
    for module in MODULES:
        if module != "headstart.__main__":  # that one runs the CLI
            __import__(module)
    obj = getattr(headstart, name)
    module, attribute = headstart._API[name]
    assert obj is getattr(sys.modules[module], attribute)
    assert not isinstance(obj, type(sys)), f"headstart.{name} is a module, not the API's {attribute}"


def test_the_api_has_what_the_cli_has():
    from headstart.cli.main import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert commands == {
        "inspect",
        "backbones",
        "train",
        "evaluate",
        "compare",
        "advise",
        "predict",
        "export",
        "serve",
        "lr_find",
        "audit",
        "prepare",
    }
    python = {
        "inspect": "inspect",
        "train": "fit",
        "evaluate": "evaluate",
        "compare": "compare",
        "advise": "advise",
        "predict": "load",
        "export": "export",
        "backbones": "create_model",
        "lr_find": "find_lr",
        "audit": "audit",
        "prepare": "prepare",
    }
    assert set(python.values()) <= set(headstart.__all__)


def test_no_module_is_longer_than_450_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert max(lengths.values()) <= 450, {k: v for k, v in lengths.items() if v > 450}


RUN_FILES = (
    "config.yaml",
    "data.json",
    "history.csv",
    "metrics.json",
    "metrics-",
    "best.ckpt",
    "last.ckpt",
    "confusion_matrix.",
    "confusion_matrix-",
    "curves.png",
    "misclassified.png",
)
RUN_FOLDERS = ("checkpoints", "export")  # spelled as a path: `... / "checkpoints"`


def test_only_the_runs_module_spells_the_run_folder():
    for name, path in MODULES.items():
        if name.startswith("headstart.runs."):
            continue
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        strings = [
            n.value for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        docstrings = {
            ast.get_docstring(n, clean=False)
            for n in ast.walk(ast.parse(code))
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
        }
        names = {s: s.rsplit("/", 1)[-1] for s in strings if s not in docstrings}  # a file name, or a path's last part
        spelled = [s for s, n in names.items() if any(n == f or f[-1] in ".-" and n.startswith(f) for f in RUN_FILES)]
        paths = "\n".join(line for line in code.splitlines() if "torch.hub" not in line)  # torch's own checkpoints/
        spelled += re.findall(rf"/\s*[\"']({'|'.join(RUN_FOLDERS)})[\"']", paths)
        assert spelled == [], f"{name} spells run-folder paths: {spelled}"


def test_every_user_facing_error_is_a_headstart_error():
    from headstart import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, errors.HeadstartError) and issubclass(c, ValueError) for c in classes)
    raised = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                raised.add(node.exc.func.id)
    assert not raised & {"ValueError", "RuntimeError", "TypeError", "KeyboardInterrupt"}, raised


def test_using_a_model_does_not_import_training():
    code = (
        "import sys, headstart.inference.predict, headstart.inference.serve, headstart.inference.export; "
        "print(sorted(m for m in ('lightning', 'torchmetrics', 'matplotlib', 'headstart.training', 'timm') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_test_file_imports_another():
    tests = Path(__file__).parent
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad = [n for n in names if n.split(".")[-1].startswith("test_") or n.split(".")[0] == "conftest"]
            assert not bad, f"{path.relative_to(tests)} imports {bad}: shared helpers go in tests/helpers/"


def test_tests_are_laid_out_like_the_package():
    tests = Path(__file__).parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("helpers", "fixtures", "__pycache__")}
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert folders <= packages, folders - packages


@pytest.mark.parametrize("where", ["headstart.training.fit:fit", "headstart.comparison:compare"])
def test_the_top_level_steps_stay_short(where):
    """``fit`` and ``compare`` read as the tutorial's steps: each lever gets a named step, not lines here."""
    import importlib
    import inspect

    module, name = where.split(":")
    fn = ast.parse(inspect.getsource(getattr(importlib.import_module(module), name)).lstrip()).body[0]
    body = fn.body[1:] if ast.get_docstring(fn) else fn.body
    assert body[-1].end_lineno - body[0].lineno + 1 <= 40


def test_the_old_import_path_of_the_readme_still_works_and_says_where_to_go():
    import headstart.backbones as old

    for name in ("save_model", "load_saved_model", "Preprocessing"):
        with pytest.warns(DeprecationWarning, match=f"from headstart import {name}"):
            assert getattr(old, name) is getattr(headstart, name)
