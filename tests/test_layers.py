"""DESIGN.md's layers: one direction of dependency, top uses bottom; no import runs back up."""

import ast
from pathlib import Path

import softprompt

ROOT = Path(softprompt.__file__).parent
# Top (0) to bottom. Modules on one level may use each other (training, search and transfer share the run helpers).
LEVEL = {
    "cli": 0, "serve": 0,
    "api": 1,
    "training": 2, "search": 2, "transfer": 2, "sweep": 2, "examples": 2, "interop": 2,
    "tasks": 3,
    "methods": 4,
    "library": 5,
    "engine": 5.5,
    "core": 6,
    "templates": 7,
    "models": 8,
    "configs": 9, "errors": 9,
}


def _imported_tops(path: Path):
    """(line, top-level softprompt module) for every import of a softprompt module in a file."""
    package = list(path.relative_to(ROOT).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            names = [parts[0]] if parts else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("softprompt"):
            parts = node.module.split(".")[1:]
            names = [parts[0]] if parts else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("softprompt.")]
        else:
            continue
        for name in names:
            if name not in ("__version__", "__init__"):
                yield node.lineno, name


def test_every_module_has_a_level():
    tops = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in ROOT.rglob("*.py")} - {"__init__", "__main__"}
    assert tops <= set(LEVEL), f"modules without a level in DESIGN's layering: {sorted(tops - set(LEVEL))}"


def test_no_import_runs_back_up():
    upward = []
    for path in ROOT.rglob("*.py"):
        here = path.relative_to(ROOT).parts[0].removesuffix(".py")
        if here in ("__init__", "__main__"):
            continue
        for line, name in _imported_tops(path):
            assert name in LEVEL, f"{path.relative_to(ROOT)}:{line} imports unknown module {name}"
            if LEVEL[name] < LEVEL[here]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {name}")
    assert not upward, "imports that run back up the layers:\n" + "\n".join(upward)


def test_subpackages_do_not_shadow_the_api_functions():
    """softprompt.train is the function; importing the training package must not replace it."""
    import importlib

    for name in ("training.run", "training.loop", "training.state", "search", "transfer", "library"):
        importlib.import_module(f"softprompt.{name}")
    for function in ("train", "evaluate", "predict", "load_prompt"):
        assert callable(getattr(softprompt, function)), f"softprompt.{function} was shadowed by a subpackage"
