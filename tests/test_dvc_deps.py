"""Every stage depends on every project module its command runs, so editing code never leaves results stale."""

import ast
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = [ROOT / "dvc.yaml", ROOT / "perf" / "dvc.yaml"]


def module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def has_code(path: Path) -> bool:
    """An empty package marker (docstring at most) runs nothing a stage could depend on."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "stages"}


def closure(entry: str) -> set[Path]:
    """Files of `entry` and every project module it imports, transitively (packages include their __init__)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            path = module_file(".".join(parts[:i]))
            if path and path not in seen and has_code(path):
                seen.add(path)
                todo.extend(imported_modules(path))
    # the families package imports every family module by registry scan
    if any(p.parent.name == "families" for p in seen):
        seen.update((ROOT / "stages" / "families").glob("*.py"))
    return seen


def data_files(path: Path) -> set[Path]:
    """Templates a module renders are code too."""
    text = path.read_text()
    return {ROOT / "stages" / "templates" / m for m in re.findall(r"[\"']([\w.]+\.j2)[\"']", text)}


def covered(path: Path, deps: list[str], wdir: Path) -> bool:
    for dep in deps:
        dep_path = (wdir / dep).resolve()
        if path == dep_path or dep_path in path.parents:
            return True
    return False


def stages():
    for pipeline in PIPELINES:
        spec = yaml.safe_load(pipeline.read_text())
        for name, stage in spec["stages"].items():
            body = stage.get("do", stage)
            wdir = (pipeline.parent / body.get("wdir", ".")).resolve()
            yield f"{pipeline.relative_to(ROOT)}:{name}", body, wdir


def test_every_stage_depends_on_the_code_it_runs():
    missing = []
    checked = 0
    for name, body, wdir in stages():
        modules = re.findall(r"python -m ([\w.]+)", body["cmd"])
        assert modules, f"{name}: command runs no project module: {body['cmd']}"
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        for module in modules:
            files = closure(module)
            files |= {t for f in list(files) for t in data_files(f)}
            for path in sorted(files):
                checked += 1
                if not covered(path, deps, wdir):
                    missing.append(f"{name}: {path.relative_to(ROOT)}")
    assert checked > 50, "the dependency check followed almost no imports"
    assert not missing, "stages missing code dependencies:\n" + "\n".join(missing)


def test_the_check_detects_a_missing_dependency():
    files = closure("stages.export")
    assert ROOT / "stages" / "families" / "llm.py" in files
    assert not covered(ROOT / "stages" / "families" / "llm.py", ["stages/export.py", "stages/core"], ROOT)
