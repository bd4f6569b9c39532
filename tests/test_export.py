import json

import pytest
import yaml

from stages.check_params import load_checked
from stages.core.errors import BuildError
from stages.core.recipe import postcheck, precheck_group_size, recipe_problems
from stages.core.schema import Variant
from tests.conftest import prepare, run_stage, write_params


@pytest.fixture
def fetched(project):
    prepare(project)
    return project


def test_int4_and_int8_exports_carry_their_recipe(built):
    fetched = built
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
    with pytest.raises(BuildError, match="mode int4_asym != requested int8_asym"):
        postcheck([fetched / "models/tiny/int4/openvino_model.xml"], Variant(weight_format="int8"), "int8")
    with pytest.raises(BuildError, match="group_size 32 != requested 64"):
        postcheck([fetched / "models/tiny/int4/openvino_model.xml"], Variant(weight_format="int4", group_size=64), "x")


def test_group_size_not_dividing_channels_is_refused_before_export(built):
    fetched = built
    params = yaml.safe_load((fetched / "params.yaml").read_text())
    params["variants"]["int4"]["group_size"] = 48  # hidden size is 64
    write_params(fetched, params)
    before = (fetched / "models/tiny/int4/manifest.json").read_bytes()
    proc = run_stage("stages.export", "--artifact", "tiny/int4", check=False)
    assert proc.returncode == 1
    assert (
        "variants.int4.group_size: 48 does not divide the 128 input channels of model.layers.0.mlp.down_proj"
        in proc.stderr
    )
    assert "set group_size_fallback: adjust|ignore" in proc.stderr
    assert (fetched / "models/tiny/int4/manifest.json").read_bytes() == before  # the old artifact, untouched
    # an explicit fallback lets it through
    precheck_group_size(
        fetched / "models/tiny/checkpoint",
        Variant(weight_format="int4", group_size=48, group_size_fallback="adjust"),
        "int4",
    )


def test_failed_export_leaves_nothing(built, monkeypatch):
    fetched = built
    from stages import export as export_stage
    from stages.families.llm import LLMFamily

    def broken(self, checkpoint, variant, out, *args):
        (out / "openvino_model.xml").write_text("<half-written/>")
        raise RuntimeError("export interrupted")

    monkeypatch.setattr(LLMFamily, "export", broken)
    import shutil

    shutil.rmtree(fetched / "models/tiny/int8")
    with pytest.raises(RuntimeError, match="export interrupted"):
        export_stage.export(load_checked(), "tiny/int8")
    assert not (fetched / "models/tiny/int8").exists()
    assert not list((fetched / "models/tiny").glob(".*tmp*"))


def test_export_without_fetch_names_the_missing_checkpoint(project):
    proc = run_stage("stages.export", "--artifact", "tiny/int8", check=False)
    assert "models/tiny/checkpoint: no checkpoint for 'tiny'; run `dvc repro fetch@tiny`" in proc.stderr


def test_data_aware_int4_uses_local_calibration_text(fetched):
    params = yaml.safe_load((fetched / "params.yaml").read_text())
    params["calibration"] = {"calib": {"path": str(fetched / "eval.txt"), "max_chars": 3000}}
    params["variants"]["int4-awq"] = {
        "weight_format": "int4",
        "group_size": 32,
        "ratio": 1.0,
        "awq": True,
        "scale_estimation": True,
        "dataset": "calib",
        "num_samples": 4,
    }
    write_params(fetched, params)
    params["build"].append("tiny/int4-awq")
    write_params(fetched, params)
    prepare(fetched)
    run_stage("stages.export", "--artifact", "tiny/int4-awq")
    rt_info = json.loads((fetched / "models/tiny/int4-awq/manifest.json").read_text())["rt_info"]
    assert rt_info["openvino_model.xml"]["scale_estimation"] == "True"
    assert rt_info["openvino_model.xml"]["awq"] == "True"


def test_a_requested_option_the_ir_does_not_record_is_a_mismatch():
    """A recipe key NNCF did not record (e.g. an IR compressed elsewhere) must not read as a match."""
    recorded = {"mode": "int4_asym", "group_size": "64"}
    variant = Variant(weight_format="int4", group_size=64, ratio=0.8)
    assert recipe_problems(recorded, variant, {"u4": 0.8}) == ["ratio not recorded in the IR (requested 0.8)"]
    assert recipe_problems({**recorded, "ratio": "0.8"}, variant, {"u4": 0.8}) == []
    assert recipe_problems({}, variant, {"u4": 1.0}) == [
        "no nncf/weight_compression rt_info: the IR was not compressed"
    ]


def test_tokenizer_ir_that_differs_from_the_hf_tokenizer_fails_export(built):
    fetched = built
    """A tokenizer IR that encodes a probe differently from the HF tokenizer beside it refuses the artifact."""
    from stages import export as export_stage
    from stages.core import tokenizers

    def swapped(folder, extra=()):
        found = tokenizers.Parity(10)
        found.mismatches.append(
            {"probe": "\n\n   1.", "what": "encode", "first_difference": 1, "hf": ["ĠĠĠ", "1"], "ir": ["ĠĠ", "Ġ"]}
        )
        return found

    import pytest as _pytest

    mp = _pytest.MonkeyPatch()
    mp.setattr(export_stage, "parity", swapped)
    try:
        with pytest.raises(
            BuildError,
            match=r"tokenizer IR differs from the HF tokenizer on 1 probe\(s\); first: "
            r"encode of '\\n\\n   1.' differs at token 1",
        ):
            export_stage.export(load_checked(), "tiny/int8")
        assert (fetched / "models/tiny/int8/manifest.json").is_file()  # the previous export stays as it was
        assert not list((fetched / "models/tiny").glob(".*tmp*"))
        params = yaml.safe_load((fetched / "params.yaml").read_text())
        params["models"]["tiny"]["tokenizer_parity"] = "record"
        write_params(fetched, params)
        manifest = export_stage.export(load_checked(), "tiny/int8")
        assert manifest["tokenizer_parity"]["share"] == 0.9
    finally:
        mp.undo()
