"""Layering: no import runs upward, and the runtime never imports the research area (`egmf_core.research`).

The layers are deploy -> streaming -> egmf_core and export -> egmf_core. A small AST check (stdlib `ast`, no new
dependency) reads every `.py` under egmf_core/, streaming/, export/ and deploy/ and collects every import: module
level and inside functions or `if` blocks (a lazy import is a dependency too), absolute and relative
(`from . import x`, `from ..research.evaluate import y`), and `importlib.import_module("...")` / `__import__("...")`
with a literal name. Rules:

- egmf_core imports none of streaming, export, deploy;
- export imports neither streaming nor deploy;
- streaming does not import deploy;
- the runtime (streaming/, deploy/, export/ and every egmf_core module outside egmf_core/research/) never imports
  the research area `egmf_core.research` (training, evaluation, ablations, calibration fitting, distillation,
  analysis, feature packing).

A second check keeps private names private: no module imports a name starting with `_` (`from x import _y`,
dunder names aside) from another module of the project; what another module needs is public, with a docstring.

A failure lists each violation as `file:line: importer imports imported (rule)`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("egmf_core", "streaming", "export", "deploy")

#: Top-level package -> the top-level packages it must not import.
FORBIDDEN_PACKAGES: dict[str, frozenset[str]] = {
    "egmf_core": frozenset({"streaming", "export", "deploy"}),
    "export": frozenset({"streaming", "deploy"}),
    "streaming": frozenset({"deploy"}),
    "deploy": frozenset(),
}

#: egmf_core's research area (training, evaluation, ablations, calibration fitting, analysis), which the runtime must
#: never import. A module counts as research if it is this package or lives inside it, e.g. `egmf_core.research.train`.
RESEARCH_PACKAGE = "egmf_core.research"


@dataclass(frozen=True)
class Import:
    path: Path  # relative to the repository root
    line: int
    importer: str  # dotted module name of the importing file
    imported: str  # dotted module name it imports (for `from X import a`, `X.a` when that may be a module)


def module_name(path: Path) -> str:
    """Dotted name of a file relative to the repository root: `egmf_core/features/cache.py` ->
    `egmf_core.features.cache`, `streaming/__init__.py` -> `streaming`."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name `from <level dots><module> import ...` means inside `importer`."""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        if level - 1 > len(package):
            raise ValueError(f"relative import beyond the top-level package in {importer}")
        package = package[: len(package) - (level - 1)]
    return ".".join(package + ([module] if module else []))


def imports_of(path: Path, root: Path = REPO) -> list[Import]:
    """Every import in one file (`path` relative to `root`), wherever it sits in the file."""
    source = (root / path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, importer, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                resolve_relative(importer, is_package, node.level, node.module) if node.level else (node.module or "")
            )
            found.append(Import(path, node.lineno, importer, base))
            # `from egmf_core import research` imports the module egmf_core.research: record the submodule candidates
            found.extend(
                Import(path, node.lineno, importer, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"
            )
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
                isinstance(func, ast.Name) and func.id in {"__import__", "import_module"}
            )
            if dynamic and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                name = node.args[0].value
                if name.startswith("."):  # importlib.import_module(".x", package=...): only the importer's package
                    level = len(name) - len(name.lstrip("."))
                    name = resolve_relative(importer, is_package, level, name.lstrip(".") or None)
                found.append(Import(path, node.lineno, importer, name))
    return found


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def is_research(name: str) -> bool:
    return is_within(name, RESEARCH_PACKAGE)


def broken_rule(imp: Import) -> str | None:
    """The layering rule this import breaks, or None."""
    top, imported_top = imp.importer.split(".")[0], imp.imported.split(".")[0]
    if imported_top in FORBIDDEN_PACKAGES[top]:
        return f"{top} must not import {imported_top}"
    if is_research(imp.imported) and not is_research(imp.importer):
        return "the runtime must not import egmf_core.research"
    return None


def violations_of(found: list[Import]) -> list[str]:
    """`file:line: importer imports imported (rule)` for each import that breaks a rule, sorted. One line per
    statement and module: `from egmf_core.research.evaluate import a, b` is reported as `egmf_core.research.evaluate`
    alone (the names it also records, in case they are submodules, are dropped when their module is already
    reported)."""
    broken = {(imp.path, imp.line, imp.imported): (imp, rule) for imp in found if (rule := broken_rule(imp))}
    lines = []
    for (path, line, imported), (imp, rule) in sorted(broken.items(), key=lambda item: (str(item[0][0]), item[0][1:])):
        parent = imported.rsplit(".", 1)[0]
        if parent != imported and (path, line, parent) in broken:
            continue
        lines.append(f"{path}:{line}: {imp.importer} imports {imported} ({rule})")
    return lines


def source_files() -> list[Path]:
    files = sorted(
        path.relative_to(REPO)
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )
    assert files, "no source files found"
    return files


def test_no_upward_or_research_imports() -> None:
    violations = [line for path in source_files() for line in violations_of(imports_of(path))]
    assert not violations, (
        "layering violations (deploy -> streaming -> egmf_core, export -> egmf_core; the runtime never imports "
        "egmf_core.research):\n" + "\n".join(violations)
    )


def private_imports_of(path: Path, root: Path = REPO) -> list[str]:
    """`file:line: importer imports module._name (private name)` for each `from module import _name` in one file that
    takes a private name (one leading underscore, not a dunder) from another module of the project (egmf_core,
    streaming, export, deploy). A package importing its own private submodule (`from . import _x` in an
    `__init__.py`) is its own business and not reported."""
    tree = ast.parse((root / path).read_text(encoding="utf-8"), filename=str(path))
    importer = module_name(path)
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = resolve_relative(importer, is_package, node.level, node.module) if node.level else (node.module or "")
        if base.split(".")[0] not in PACKAGES or base == importer:
            continue
        found.extend(
            f"{path}:{node.lineno}: {importer} imports {base}.{alias.name} (private name)"
            for alias in node.names
            if alias.name.startswith("_") and not alias.name.startswith("__")
        )
    return found


def test_no_private_names_across_modules() -> None:
    found = [line for path in source_files() for line in private_imports_of(path)]
    assert not found, "private names imported from another module (make them public):\n" + "\n".join(found)


# --- the checker itself, on synthetic sources -------------------------------------------------------------------


def _check(tmp_path: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return [line for name in sorted(files) for line in violations_of(imports_of(Path(name), root=tmp_path))]


def test_checker_finds_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    found = _check(
        tmp_path,
        {
            "egmf_core/__init__.py": "",
            "egmf_core/predictor.py": (
                "import numpy\n"
                "from .model import EGMFModel\n"  # same layer: fine
                "def load():\n"
                "    from export.runner import use_engines\n"  # lazy, upward
                "    return use_engines\n"
            ),
            "egmf_core/data/loader.py": (  # relative, research
                "from ..research.evaluate import lookup\nfrom .. import research\nfrom ..research import train\n"
            ),
            "egmf_core/research/__init__.py": "",
            "egmf_core/research/evaluate.py": (
                "from streaming.analyzer import live_cut\n"  # research is still egmf_core: upward
                "from . import train\nfrom ..model import EGMFModel\nfrom .metrics import f1\n"  # fine
            ),
            "export/runner.py": (
                "import importlib\nmod = importlib.import_module('deploy.app')\nfrom egmf_core import model\n"
            ),
            "streaming/client.py": (
                "if True:\n    import deploy.protocol as protocol\nimport egmf_core.research.train.loop\n"
            ),
            "deploy/app.py": "from streaming import analyzer\nfrom egmf_core.research.evaluate import a, b\n",
        },
    )
    rule = "(the runtime must not import egmf_core.research)"
    assert found == [
        f"deploy/app.py:2: deploy.app imports egmf_core.research.evaluate {rule}",
        f"egmf_core/data/loader.py:1: egmf_core.data.loader imports egmf_core.research.evaluate {rule}",
        f"egmf_core/data/loader.py:2: egmf_core.data.loader imports egmf_core.research {rule}",
        f"egmf_core/data/loader.py:3: egmf_core.data.loader imports egmf_core.research {rule}",
        "egmf_core/predictor.py:4: egmf_core.predictor imports export.runner (egmf_core must not import export)",
        "egmf_core/research/evaluate.py:1: egmf_core.research.evaluate imports streaming.analyzer (egmf_core must not "
        "import streaming)",
        "export/runner.py:2: export.runner imports deploy.app (export must not import deploy)",
        "streaming/client.py:2: streaming.client imports deploy.protocol (streaming must not import deploy)",
        f"streaming/client.py:3: streaming.client imports egmf_core.research.train.loop {rule}",
    ]


def test_relative_names() -> None:
    assert resolve_relative("egmf_core.data.meld", False, 2, "research.evaluate") == "egmf_core.research.evaluate"
    assert resolve_relative("egmf_core.research.train", False, 2, "model") == "egmf_core.model"
    assert resolve_relative("egmf_core.data", True, 1, "meld") == "egmf_core.data.meld"
    assert resolve_relative("egmf_core.data", True, 2, None) == "egmf_core"
    assert resolve_relative("egmf_core.predictor", False, 1, None) == "egmf_core"
    assert module_name(Path("streaming/__init__.py")) == "streaming"
    assert module_name(Path("egmf_core/features/cache.py")) == "egmf_core.features.cache"


def test_private_name_checker(tmp_path: Path) -> None:
    files = {
        "deploy/client.py": (
            "from __future__ import annotations\nfrom numpy import _private\n"  # not the project: fine
            "from streaming.cli import EXIT_OK, _emit\n"  # private, absolute
            "def f():\n    from .app import __version__, _helper\n"  # dunder fine, lazy relative private reported
        ),
        "egmf_core/features/__init__.py": "from . import _native\nfrom .cache import _key\n",  # own submodule fine
        "export/runner.py": "from egmf_core.backbone import TORCH_DTYPES, LoadedBackbone\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    found = [line for name in sorted(files) for line in private_imports_of(Path(name), root=tmp_path)]
    assert found == [
        "deploy/client.py:3: deploy.client imports streaming.cli._emit (private name)",
        "deploy/client.py:5: deploy.client imports deploy.app._helper (private name)",
        "egmf_core/features/__init__.py:2: egmf_core.features imports egmf_core.features.cache._key (private name)",
    ]
