"""Files: atomic writes (temp + rename, stale temps of dead runs removed), readers that fail with one line,
YAML that refuses duplicate keys, file inventories."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from stages.core.errors import BuildError, user_input

TEMP_MARK = ".tmp-"  # `.<name>.tmp-<pid>`: .dvcignore and .gitignore ignore these


def temp_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}{TEMP_MARK}{os.getpid()}"


def remove_stale_temps(final: Path) -> list[Path]:
    """Temp siblings of `final` left by an interrupted run (DVC runs one writer per output, so any other is stale)."""
    removed = []
    if final.parent.is_dir():
        for p in final.parent.glob(f".{final.name}{TEMP_MARK}*"):
            if p == temp_sibling(final):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def output_errors(final: Path) -> Iterator[None]:
    """A full disk or a read-only folder while writing an output: one line naming it."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise BuildError(f"{final}: cannot write output ({os.strerror(e.errno)})") from e
        raise
    except RuntimeError as e:  # C++ writers (OpenVINO's serializer) report a full disk as a bare iostream error
        if disk_full(final.parent):
            raise BuildError(f"{final}: cannot write output ({os.strerror(errno.ENOSPC)})") from e
        raise


def disk_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Less than `margin` bytes left for this user on the filesystem of `folder`."""
    with contextlib.suppress(OSError):
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize < margin
    return False


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `final` only if the block completes; nothing is left otherwise."""
    final = Path(final)
    tmp = fresh_temp_dir(final)
    try:
        with output_errors(final):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(tmp, final)


@contextlib.contextmanager
def scratch_dir(name: Path) -> Iterator[Path]:
    """A work folder `.<name>.tmp-<pid>` next to the outputs (not in the system temp folder, where a killed run's
    scratch would stay for good): ignored by git and DVC, removed at the end and, if a run died, by the next one."""
    name = Path(name)
    tmp = fresh_temp_dir(name)
    try:
        with output_errors(name):
            yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fresh_temp_dir(beside: Path) -> Path:
    """An empty temp sibling of `beside`, after removing what dead runs left next to it."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(beside)
    tmp = temp_sibling(beside)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_sibling(path)
    try:
        with output_errors(path):
            tmp.write_bytes(data)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def finite_json(data: Any) -> Any:
    """NaN / inf (not JSON) written as the strings "nan" / "inf" / "-inf": a reader sees a value that is not a
    number (the gate fails it), never a silently dropped key."""
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def dumps(data: Any) -> str:
    return json.dumps(finite_json(data), indent=2, default=str, allow_nan=False) + "\n"


def write_json(path: Path, data: Any) -> None:
    """JSON atomically (non-finite numbers as strings, see finite_json)."""
    write_text(path, dumps(data))


def read_json(path: Path, what: str = "") -> Any:
    """Parse a JSON file; a missing or broken one (e.g. a merge conflict) is one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: {what or 'file'} not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    if "<<<<<<<" in text and ">>>>>>>" in text:
        raise BuildError(
            f"{path}: contains git merge-conflict markers; resolve them or re-run the stage that writes it"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BuildError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last one)."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first at line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: not found")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}" if mark else ""
        raise BuildError(f"{path}{where}: not valid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise BuildError(f"{path}: not valid YAML: {e}") from e


def read_lines(path: str | Path, key: str, what: str = "line") -> list[str]:
    """The entries of a small prompt file: its non-empty lines ('#' starts a comment), or, for a .jsonl file, one
    JSON string (or {"prompt": ...}) per line, kept verbatim (multi-line code prompts); one clear error when empty."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{key}: file not found: {path}")
    with user_input(f"{key}: {path}"):
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".jsonl":
        entries = [json_entry(line, f"{key}: {path}:{i}") for i, line in enumerate(lines, 1) if line]
    else:
        entries = [line for line in lines if line and not line.startswith("#")]
    if not entries:
        raise BuildError(f"{key}: {path} has no {what}s (one per line; '#' starts a comment)")
    return entries


def json_entry(line: str, where: str) -> str:
    with user_input(where):
        value = json.loads(line)
    value = value.get("prompt") if isinstance(value, dict) else value
    if not isinstance(value, str) or not value:
        raise BuildError(f'{where}: expected a JSON string or {{"prompt": "..."}}')
    return value


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_inventory(root: Path, exclude: tuple[str, ...] = ("manifest.json",)) -> list[dict]:
    """Every file below `root` with its size and sha256, sorted by path."""
    root = Path(root)
    return [
        {"path": p.relative_to(root).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in exclude
    ]


def dir_size(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def copy_tree(src: Path, dest: Path, keep=lambda p: True) -> None:
    for p in sorted(Path(src).rglob("*")):
        if p.is_file() and keep(p):
            target = dest / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p.resolve(), target)
