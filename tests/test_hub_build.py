"""The online path end to end: a model and an eval set served over HTTP by the local hub server (tests/hub_server.py),
through `dvc repro` (fetch -> export -> validate -> gate), the `datasets` text, speech and prompt sets, and their
errors."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import assert_nothing_written, error_line, hub_env, run_stage, write_params


def online(project, hub, *, dataset="org/eval-text", revision="v1", column="text", build=("tiny/fp16", "tiny/int8")):
    """The tiny project with its model from org/tiny@v1.0 and its eval and calibration text from a hub dataset."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["tiny"]["source"] = {"type": "hub", "repo_id": "org/tiny", "revision": "v1.0"}
    text = {"type": "hf", "path": dataset, "split": "test", "column": column, "revision": revision, "max_chars": 2000}
    params["eval_sets"] = {"text": text}
    params["calibration"] = {"calib": {**text, "max_samples": 6}}
    params["build"] = list(build)
    write_params(project, params)


def test_fetch_export_validate_gate_over_http_record_the_commit_and_dataset_revision(project, hub, tmp_path):
    online(project, hub)
    env = {k: v for k, v in {**os.environ, **hub_env(hub.url, tmp_path / "hf-home")}.items() if v is not None}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "gate"], cwd=project, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    checkpoint = json.loads((project / "models/tiny/checkpoint/manifest.json").read_text())
    assert (checkpoint["requested_revision"], checkpoint["resolved_revision"]) == ("v1.0", hub.commits["v1.0"])
    sets = {
        folder: json.loads((project / f"data/{folder}/manifest.json").read_text()) for folder in ("eval", "calibration")
    }
    assert sets["eval"]["text"]["resolved_revision"] == hub.commits["eval v1"]
    assert sets["eval"]["text"]["rows"] == 18 and sets["calibration"]["calib"]["rows"] == 6
    assert (project / "data/eval/text.txt").read_text().startswith("The committee met on Tuesday")
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert gate["passed"], gate
    for variant in ("fp16", "int8"):
        cpu = json.loads((project / f"metrics/validate/tiny/{variant}.json").read_text())["devices"]["CPU"]
        assert cpu["status"] == "validated" and cpu["metrics"]["perplexity"] > 1, cpu


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"column": "body"}, "eval_sets.text.column: 'body' is not a column of org/eval-text (columns: text)"),
        ({"revision": "v9"}, "eval_sets.text: dataset org/eval-text split test @ v9:"),
        ({"dataset": "org/missing"}, "eval_sets.text: dataset org/missing split test @ v1:"),
    ],
)
def test_a_bad_dataset_is_one_line_and_nothing_is_written(project, hub, tmp_path, change, expected):
    online(project, hub, **change)
    proc = run_stage("stages.evalsets", check=False, env=hub_env(hub.url, tmp_path / "hf-home"))
    assert error_line(proc).startswith(f"error: {expected}"), error_line(proc)
    assert_nothing_written(project / "data/eval")
    assert_nothing_written(project / "data/calibration")


def test_a_dataset_with_the_hub_down_is_one_line(project, tmp_path):
    from tests.hub_server import free_port

    online(project, None)
    proc = run_stage("stages.evalsets", check=False, env=hub_env(f"http://127.0.0.1:{free_port()}", tmp_path / "h"))
    assert error_line(proc).startswith("error: eval_sets.text: dataset org/eval-text split test @ v1:"), error_line(
        proc
    )
    assert_nothing_written(project / "data/eval")


def test_a_speech_set_from_a_hub_dataset_records_its_revision(project, hub, tmp_path):
    """The stored audio bytes are read by soundfile and resampled to 16 kHz (no torchcodec)."""
    import soundfile as sf

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["speech_sets"] = {"tones": {"type": "hf", "path": "org/speech-tiny", "revision": "v1", "max_samples": 2}}
    write_params(project, params)
    run_stage("stages.speechsets", env=hub_env(hub.url, tmp_path / "hf-home"))
    folder = project / "data/speech/tones"
    lines = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    assert [x["text"] for x in lines] == ["tone number 0", "tone number 1"]
    assert all(sf.info(str(folder / x["audio"])).samplerate == 16000 for x in lines)
    origin = json.loads((folder / "origin.json").read_text())
    assert (origin["requested_revision"], origin["resolved_revision"]) == ("v1", hub.commits["speech v1"])


def with_prompt_sets(project, **sets):
    params = yaml.safe_load((project / "params.yaml").read_text())
    base = {"type": "hf", "path": "org/captions", "split": "test", "revision": "v1"}
    params["prompt_sets"] = {name: {**base, **spec} for name, spec in sets.items()}
    write_params(project, params)


def test_prompt_sets_from_a_hub_dataset_stream_one_column_and_record_the_revision(project, hub, tmp_path):
    """Text-to-image prompts and VLM questions from dataset columns: the first max_samples rows, empty ones
    skipped, verbatim."""
    with_prompt_sets(project, captions={"column": "caption", "max_samples": 3}, questions={"column": "question"})
    run_stage("stages.evalsets", env=hub_env(hub.url, tmp_path / "hf-home"))
    folder = project / "data/prompts"

    def prompts(name):
        return [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]

    assert prompts("captions") == ["a red circle", "2 blue squares"]
    assert prompts("questions")[:2] == ["What colour is the circle?", "How many shapes?"]
    assert len(prompts("questions")) == 6  # fewer rows than max_samples (32): all of them
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["captions"]["resolved_revision"] == hub.commits["captions v1"]
    assert (manifest["captions"]["rows"], manifest["captions"]["prompts"]) == (3, 2)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"column": "prompt"}, "prompt_sets.p.column: 'prompt' is not a column of org/captions (columns: "),
        ({"column": "id"}, "prompt_sets.p.column: 'id' holds int values, not text"),
        ({"column": "caption", "revision": "v9"}, "prompt_sets.p: dataset org/captions split test @ v9:"),
    ],
)
def test_a_bad_prompt_set_is_one_line_and_nothing_is_written(project, hub, tmp_path, spec, expected):
    with_prompt_sets(project, p=spec)
    proc = run_stage("stages.evalsets", check=False, env=hub_env(hub.url, tmp_path / "hf-home"))
    assert error_line(proc).startswith(f"error: {expected}"), error_line(proc)
    assert_nothing_written(project / "data/prompts")
