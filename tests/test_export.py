import json

import pytest
import yaml

from stages.params import Variant, load_params
from stages.recipe_checks import RecipeError, postcheck, precheck_group_size
from tests.conftest import assert_nothing_written, run_stage, write_params


@pytest.fixture
def fetched(project):
    run_stage("stages.fetch", "--model", "tiny")
    return project


def test_int4_and_int8_exports_carry_their_recipe(fetched):
    for variant in ("int4", "int8"):
        run_stage("stages.export", "--model", "tiny", "--variant", variant)
    int4 = json.loads((fetched / "models/tiny/int4/manifest.json").read_text())
    rt_info = int4["rt_info"]["openvino_model.xml"]
    assert rt_info["mode"] == "int4_asym" and rt_info["group_size"] == "32"
    assert int4["weight_bitwidths"].get("u4", 0) > 0.5
    assert int4["recipe"]["group_size"] == 32 and int4["targets"] == ["CPU"]
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json"):
        assert (fetched / "models/tiny/int4" / name).is_file()
    int8 = json.loads((fetched / "models/tiny/int8/manifest.json").read_text())
    assert int8["rt_info"]["openvino_model.xml"]["mode"] == "int8_asym"
    # the post-check reads the IR, not the manifest: an int4 IR must not pass as the int8 recipe
    with pytest.raises(RecipeError, match="mode int4_asym != requested int8_asym"):
        postcheck([fetched / "models/tiny/int4/openvino_model.xml"], Variant(weight_format="int8"), "int8")
    with pytest.raises(RecipeError, match="group_size 32 != requested 64"):
        postcheck([fetched / "models/tiny/int4/openvino_model.xml"],
                  Variant(weight_format="int4", group_size=64), "x")


def test_group_size_not_dividing_channels_is_refused_before_export(fetched):
    params = yaml.safe_load((fetched / "params.yaml").read_text())
    params["variants"]["int4"]["group_size"] = 48  # hidden size is 64
    write_params(fetched, params)
    proc = run_stage("stages.export", "--model", "tiny", "--variant", "int4", check=False)
    assert proc.returncode != 0
    assert "variants.int4.group_size: 48 does not divide the 128 input channels of model.layers.0.mlp.down_proj" in proc.stderr
    assert "set group_size_fallback: adjust|ignore" in proc.stderr
    assert_nothing_written(fetched / "models/tiny/int4")
    # an explicit fallback lets it through
    precheck_group_size(fetched / "models/tiny/checkpoint",
                        Variant(weight_format="int4", group_size=48, group_size_fallback="adjust"), "int4")


def test_failed_export_leaves_nothing(fetched, monkeypatch):
    from stages import export as export_stage
    from stages.families.llm import LLMFamily

    def broken(self, checkpoint, variant, out, *args):
        (out / "openvino_model.xml").write_text("<half-written/>")
        raise RuntimeError("export interrupted")

    monkeypatch.setattr(LLMFamily, "export", broken)
    with pytest.raises(RuntimeError, match="export interrupted"):
        export_stage.export(load_params(), "tiny", "int8")
    assert_nothing_written(fetched / "models/tiny/int8")
    assert not list((fetched / "models/tiny").glob(".*tmp*"))


def test_export_without_fetch_names_the_missing_checkpoint(project):
    proc = run_stage("stages.export", "--model", "tiny", "--variant", "int8", check=False)
    assert "models/tiny/checkpoint: no fetched checkpoint for 'tiny'; run `dvc repro fetch@tiny`" in proc.stderr


def test_data_aware_int4_uses_local_calibration_text(fetched):
    params = yaml.safe_load((fetched / "params.yaml").read_text())
    params["calibration"] = {"calib": {"path": str(fetched / "eval.txt"), "max_chars": 3000}}
    params["variants"]["int4-awq"] = {"weight_format": "int4", "group_size": 32, "ratio": 1.0, "awq": True,
                                      "scale_estimation": True, "dataset": "calib", "num_samples": 4}
    write_params(fetched, params)
    run_stage("stages.evalsets")
    run_stage("stages.export", "--model", "tiny", "--variant", "int4-awq")
    rt_info = json.loads((fetched / "models/tiny/int4-awq/manifest.json").read_text())["rt_info"]
    assert rt_info["openvino_model.xml"]["scale_estimation"] == "True"
    assert rt_info["openvino_model.xml"]["awq"] == "True"
