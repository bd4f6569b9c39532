"""Release and report on the tiny pipeline: model cards read back (recipe, every rule applied, worst examples),
the manifest's sha256 against the files, withheld artifacts, upload-ready bundles that load as-is, and the report:
verdict first, tables, plots, performance from the perf pipeline (in a real browser: test_report_browser.py)."""

import json
import re
import shutil

import pytest
import yaml

from stages.core.errors import BuildError
from stages.core.io import sha256_file
from tests.conftest import dvc, run_stage, write_params


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_template):
    root = tmp_path_factory.mktemp("release") / "project"
    shutil.copytree(tiny_template, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["variants"]["int4"]["targets"] = ["CPU", "GPU"]
    params["validate"]["performance"] = True
    write_params(root, params)
    dvc("repro", "-P", cwd=root)
    return root


def card_parts(root, name):
    text = (root / "release" / name / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_manifest_lists_every_artifact_with_the_sha256_of_its_files(released):
    manifest = json.loads((released / "release/manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ["tiny/fp16", "tiny/int8", "tiny/int4", "tiny/int4-npu"]
    for entry in manifest["artifacts"]:
        assert entry["files"], entry["name"]
        for f in entry["files"]:
            assert sha256_file(released / entry["path"] / f["path"]) == f["sha256"]
    status = {a["name"]: (a["released"], a["validated_on"]) for a in manifest["artifacts"]}
    assert status["tiny/fp16"] == (True, ["CPU"]) and status["tiny/int4"] == (True, ["CPU"])
    # NPU only emulated here: not released without gate.accept_emulated
    assert status["tiny/int4-npu"] == (False, ["NPU"])
    assert manifest["gate_mode"] == "dev" and manifest["withheld"] == 1
    assert "only emulated on NPU" in manifest["artifacts"][3]["reason"]


def test_card_reads_back_recipe_rules_devices_and_versions(released):
    front, body = card_parts(released, "tiny/int4")
    assert front["library_name"] == "openvino" and front["pipeline_tag"] == "text-generation"
    assert {"openvino", "nncf", "int4", "cpu", "gpu"} <= set(front["tags"])
    assert "group_size=32" in body and "mode=int4_asym" in body  # from the IR's rt_info, not from params
    record = json.loads((released / "metrics/validate/tiny/int4.json").read_text())
    assert f"{record['devices']['CPU']['metrics']['perplexity']:.4g}" in body
    assert "| GPU | not validated |" in body and "device GPU is not present" in body
    assert "Exported with: openvino " in body and "nncf " in body and "Validated with: openvino " in body
    assert "Source reference (the checkpoint in PyTorch fp32 on the same inputs): perplexity" in body
    assert "| CPU | perplexity | fp16 |" in body  # every rule applied, with value, bound and verdict
    assert "Release status: **released**" in body and re.search(
        r"Tokenizer IR parity with the HF tokenizer: (\d+) of \1 probes identical", body
    )
    assert "load_s" not in body and "TTFT" not in body  # timings stay in the report: cards are host-independent
    _, npu = card_parts(released, "tiny/int4-npu")
    assert "Release status: **withheld** (only emulated on NPU" in npu and "emulated (NPU (NPUW on CPU))" in npu
    assert "NPU pipeline options: {'max_prompt_len': 64, 'min_response_len': 16" in npu


def test_accept_emulated_releases_the_npu_artifact_labelled(released, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(released, root, symlinks=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"]["accept_emulated"] = True
    write_params(root, params)
    run_stage("stages.release", cwd=root)
    entry = json.loads((root / "release/manifest.json").read_text())["artifacts"][3]
    assert entry["released"] and "emulated, accepted for this dev build" in entry["reason"]


def test_release_refuses_files_that_differ_from_the_export_manifest(released, monkeypatch):
    from stages import release

    monkeypatch.chdir(released)
    manifest = json.loads((released / "models/tiny/fp16/manifest.json").read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    with pytest.raises(BuildError, match=r"models/tiny/fp16: files differ from its export manifest \(\['"):
        release.verified_files("tiny/fp16", manifest)


def test_bundle_is_an_upload_ready_folder_that_loads_as_is(released, tmp_path):
    import openvino_genai as ov_genai

    run_stage("stages.release", "--bundle", str(tmp_path / "upload"), cwd=released)
    folders = sorted(p.name for p in (tmp_path / "upload").iterdir())
    assert folders == ["tiny-fp16", "tiny-int4", "tiny-int8"]  # the withheld NPU artifact is not bundled
    folder = tmp_path / "upload/tiny-int4"
    assert (folder / "README.md").read_text().startswith("---\nlicense:")
    pipe = ov_genai.LLMPipeline(str(folder), "CPU")
    assert isinstance(pipe.generate("Paris is", max_new_tokens=3), str)


def test_report_leads_with_the_verdict_then_tables_performance_and_plots(released):
    summary = (released / "reports/summary.md").read_text()
    assert summary.index("## Verdict") < summary.index("## llm") < summary.index("## Performance")
    assert "**Gate PASSED**" in summary and "- tiny/int4-npu: only emulated on NPU" in summary
    assert "| tiny/source | PyTorch fp32 |" in summary  # the source row first
    assert "TTFT ms" in summary and "peak RSS MB" in summary and "## Build time per stage" in summary
    for kind in ("accuracy", "latency"):
        points = json.loads((released / f"metrics/plots/{kind}_vs_size.json").read_text())
        assert {p["artifact"] for p in points} >= {"tiny/fp16", "tiny/int8", "tiny/int4"}
    page = (released / "reports/index.html").read_text()
    assert page.count('<figure class="plot"') == 2 and "<table>" in page and "tiny/int4 (CPU)</text>" in page
    assert page.index('<section id="verdict"') < page.index("<table>")
