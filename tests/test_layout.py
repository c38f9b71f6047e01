"""The shape of the code: the scripts a user runs on top, the machinery in the recipe/ package below them,
imports that run one way down to `recipe.cli`, which imports nothing of ours; no project import hides inside
a function; the formatter and the linter (with its complexity rule) own the layout of the code."""

import ast
import shutil
import subprocess

import pytest
from conftest import ROOT

# Each module may import only modules of a lower layer: recipe.cli is the bottom, the scripts are on top.
LAYERS = [
    ["recipe.cli"],
    ["recipe.sampling", "recipe.run_folder"],
    ["recipe.config", "recipe.corpus", "recipe.run_state"],
    ["recipe.model", "recipe.streaming"],
    ["recipe.arguments", "recipe.trainer"],
    ["recipe.resume", "recipe.card"],
    ["data", "callbacks"],
    ["train", "push", "generate", "eval"],
    ["app"],  # serves generate.py's model
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py"))
PACKAGE = sorted(f"recipe.{p.stem}" for p in (ROOT / "recipe").glob("*.py") if p.stem != "__init__")
MODULES = SCRIPTS + PACKAGE


def source(module: str) -> str:
    return (ROOT / f"{module.replace('.', '/')}.py").read_text()


def project_imports(module: str) -> list[tuple[str, bool]]:
    """(imported project module, whether the import is inside a function) for each import of `module`."""
    tree = ast.parse(source(module))
    functions = [f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(n) for f in functions for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from recipe import cli` imports the module recipe.cli; `from recipe.cli import x` too
            names = [f"recipe.{a.name}" for a in node.names] if node.module == "recipe" else [node.module]
        found += [(name, id(node) in inside) for name in names if name in MODULES]
    return found


def test_the_scripts_a_user_runs_are_on_top_and_few():
    assert len(SCRIPTS) <= 8, SCRIPTS
    assert {"train", "callbacks", "data", "push", "generate", "eval", "app"} <= set(SCRIPTS)


def test_every_module_has_a_layer():
    assert set(MODULES) <= set(LAYER), set(MODULES) - set(LAYER)


def test_imports_run_one_way_down_to_a_base_that_imports_nothing_of_ours():
    assert project_imports("recipe.cli") == []
    wrong = [(m, target) for m in MODULES for target, _ in project_imports(m) if LAYER[target] >= LAYER[m]]
    assert wrong == [], f"imports that do not go down a layer: {wrong}"


def test_no_project_import_hides_inside_a_function():
    hidden = {(m, target) for m in MODULES for target, inside in project_imports(m) if inside}
    assert hidden == set(), hidden


def test_every_module_says_what_it_is_for():
    for module in [*MODULES, "recipe.__init__"]:
        assert ast.get_docstring(ast.parse(source(module))), module


def test_file_names_of_a_run_are_written_once():
    """recipe/run_folder.py owns the names of a run's files: no other module spells them."""
    names = ['"trainer_state.json"', '"run.json"', '"recipe_config.yaml"', '"samples.jsonl"', '"checksums.json"']
    names += ['"_run.lock"']
    spelled = {(m, n) for m in MODULES if m != "recipe.run_folder" for n in names if n in source(m)}
    assert spelled == set(), spelled


def test_a_space_gets_every_module_app_py_imports():
    """push.py --space uploads app.py with what it imports: nothing of ours may be missing there."""
    import push

    shipped = {name.removesuffix(".py").replace("/", ".") for name in push.SPACE_FILES}
    needed = {target for module in shipped - {"recipe.__init__"} for target, _ in project_imports(module)}
    assert needed <= shipped, needed - shipped


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in requirements-dev.txt")
def test_the_formatter_and_the_linter_own_the_layout():
    """`ruff format` writes the code (a table may keep its alignment with `# fmt: skip`, ten at most) and
    `ruff check` passes with its complexity rule on (pyproject.toml: C901, mccabe's max-complexity)."""
    for command in (["ruff", "format", "--check", "."], ["ruff", "check", "."]):
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    python = [p for p in ROOT.rglob("*.py") if not {".git", ".venv", "runs", "build"} & set(p.parts)]
    assert sum(p.read_text().count("# fmt: skip") for p in python) <= 10
