"""A full disk while a stage writes its output: a small tmpfs mounted where the output goes. The stage fails with one
line naming the output and leaves nothing in the folder but what was there before (no output, no temp sibling)."""

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import error_line, prepare, run_stage


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int):
    """`folder` as a tmpfs of `size_kb` KiB (root only; skipped where mounting is not permitted)."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({proc.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_fetch_onto_a_full_disk_is_one_line_and_writes_nothing(project):
    run_stage("stages.check_params", "--check")
    with small_disk(project / "models/tiny", 64) as disk:  # the tiny checkpoint is ~400 KiB
        proc = run_stage("stages.fetch", "--model", "tiny", check=False)
        assert error_line(proc) == "error: models/tiny/checkpoint: cannot write output (No space left on device)"
        assert listing(disk) == []
    assert not (project / "data/sources/tiny.json").exists()


def test_export_onto_a_full_disk_is_one_line_and_leaves_the_checkpoint_alone(project, tmp_path):
    prepare(project)
    checkpoint = project / "models/tiny/checkpoint"
    kept = shutil.copytree(checkpoint, tmp_path / "checkpoint")
    size_kb = sum(p.stat().st_size for p in kept.rglob("*") if p.is_file()) // 1024 + 128
    with small_disk(project / "models/tiny", size_kb) as disk:  # room for the checkpoint, not for the IR
        shutil.copytree(kept, checkpoint)
        before = listing(disk)
        proc = run_stage("stages.export", "--artifact", "tiny/fp16", check=False)
        assert error_line(proc) == "error: models/tiny/fp16: cannot write output (No space left on device)"
        assert listing(disk) == before
