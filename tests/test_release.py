"""Release on the tiny pipeline: model cards read back, the manifest's sha256 against the files, withheld
artifacts, upload-ready bundles that load as-is, and the report's performance table, plots and HTML page."""
import json
import subprocess
import sys

import pytest
import yaml

from stages.common import sha256_file
from tests.conftest import EVAL_TEXT, run_stage, scaffold, tiny_params


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("release")
    text = root.parent / f"{root.name}-eval.txt"
    text.write_text(EVAL_TEXT)
    params = tiny_params(tiny_checkpoint, text)
    params["variants"]["int4"]["targets"] = ["CPU", "GPU"]
    params["validate"]["performance"] = True
    scaffold(root, params)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


def card_parts(root, name):
    text = (root / "release" / name / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_manifest_lists_every_artifact_with_the_sha256_of_its_files(built):
    manifest = json.loads((built / "release/manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ["tiny/fp16", "tiny/int8", "tiny/int4", "tiny/int4-npu"]
    for entry in manifest["artifacts"]:
        assert entry["files"], entry["name"]
        for f in entry["files"]:
            assert sha256_file(built / entry["path"] / f["path"]) == f["sha256"]
    status = {a["name"]: (a["released"], a["validated_on"]) for a in manifest["artifacts"]}
    assert status["tiny/fp16"] == (True, ["CPU"]) and status["tiny/int4"] == (True, ["CPU"])
    assert status["tiny/int4-npu"] == (False, [])  # NPU absent: nothing to release it on
    assert manifest["gate_mode"] == "dev" and manifest["withheld"] == 1


def test_card_reads_back_recipe_metrics_devices_and_versions(built):
    front, body = card_parts(built, "tiny/int4")
    assert front["library_name"] == "openvino" and front["pipeline_tag"] == "text-generation"
    assert {"openvino", "nncf", "int4", "cpu", "gpu"} <= set(front["tags"])
    assert "group_size=32" in body and "mode=int4_asym" in body  # from the IR's rt_info, not from params
    record = json.loads((built / "metrics/validate/tiny/int4.json").read_text())
    assert f"{record['metrics']['perplexity']:.4g}" in body
    assert "| GPU | not_validated |" in body and "device GPU is not present" in body
    assert "Exported with: openvino " in body and "nncf " in body and "Validated with: openvino " in body
    assert "eval_set" in body and "Release status: **released**" in body
    _, npu = card_parts(built, "tiny/int4-npu")
    assert "Release status: **withheld** (not validated on any target device)" in npu


def test_release_refuses_files_that_differ_from_the_export_manifest(built, monkeypatch):
    from stages import release

    monkeypatch.chdir(built)
    manifest = json.loads((built / "models/tiny/fp16/manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    with pytest.raises(SystemExit, match=r"models/tiny/fp16: files differ from its export manifest \(\['"):
        release.verified_files("tiny", "fp16", manifest)


def test_bundle_is_an_upload_ready_folder_that_loads_as_is(built, tmp_path):
    import openvino_genai as ov_genai

    run_stage("stages.release", "--bundle", str(tmp_path / "upload"), cwd=built)
    folders = sorted(p.name for p in (tmp_path / "upload").iterdir())
    assert folders == ["tiny-fp16", "tiny-int4", "tiny-int8"]  # the withheld NPU artifact is not bundled
    folder = tmp_path / "upload/tiny-int4"
    assert (folder / "README.md").read_text().startswith("---\nlicense:")
    pipe = ov_genai.LLMPipeline(str(folder), "CPU")
    assert isinstance(pipe.generate("Paris is", max_new_tokens=3), str)


def test_report_has_performance_per_device_plots_and_an_html_page(built):
    summary = (built / "reports/summary.md").read_text()
    assert "## llm performance" in summary and "TTFT ms" in summary and "peak RSS MB" in summary
    for kind in ("accuracy", "latency"):
        points = json.loads((built / f"metrics/plots/llm_{kind}_vs_size.json").read_text())
        assert {p["artifact"] for p in points} == {"tiny/fp16", "tiny/int8", "tiny/int4", "tiny/int4-npu"}
    page = (built / "reports/index.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page and "tiny/int4" in page
