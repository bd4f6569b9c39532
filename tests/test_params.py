import copy
import subprocess
import sys

import pytest
import yaml

from stages.params import ParamsError, load_params
from tests.conftest import REPO, assert_nothing_written, run_stage, scaffold, tiny_params, write_params


def test_shipped_params_and_hub_example_validate():
    assert "smollm2-135m" in load_params(REPO / "params.yaml").models
    hub = load_params(REPO / "configs" / "hub-models.yaml")
    assert all(m.source.type == "hub" for m in hub.models.values())


@pytest.fixture
def base(tmp_path):
    return tiny_params(tmp_path / "ckpt", tmp_path / "t.txt")


def error_for(tmp_path, params) -> str:
    with pytest.raises(ParamsError) as e:
        load_params(write_params(tmp_path, params))
    return str(e.value)


def test_unknown_key_is_named(tmp_path, base):
    base["variants"]["int8"]["gropu_size"] = 64
    assert error_for(tmp_path, base).endswith("variants.int8.gropu_size: unknown key")


def test_wrong_type_is_named(tmp_path, base):
    base["variants"]["int4"]["group_size"] = "big"
    assert "variants.int4.group_size:" in error_for(tmp_path, base)


def test_npu_refuses_asymmetric_or_groupwise_int4(tmp_path, base):
    bad = copy.deepcopy(base)
    bad["variants"]["int4-npu"]["sym"] = False
    assert "variants.int4-npu.targets: NPU needs int4 to be channel-wise symmetric" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["variants"]["int4-npu"]["group_size"] = 64
    assert "group_size=64" in error_for(tmp_path, bad)


def test_fp16_with_compression_options_refused(tmp_path, base):
    base["variants"]["fp16"]["group_size"] = 64
    assert "variants.fp16: weight_format fp16 takes no compression options, got group_size" in error_for(tmp_path, base)


def test_int4_needs_group_size_and_scale_estimation_needs_data(tmp_path, base):
    del base["variants"]["int4"]["group_size"]
    assert "variants.int4.group_size: int4 needs an explicit group size" in error_for(tmp_path, base)
    base["variants"]["int4"].update(group_size=32, scale_estimation=True)
    assert "variants.int4.scale_estimation: needs `dataset`" in error_for(tmp_path, base)


def test_cross_references(tmp_path, base):
    bad = copy.deepcopy(base)
    bad["llm"]["variants"].append("int3")
    assert "llm.variants.4: unknown variant 'int3'" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["llm"]["reference"] = "int8x"
    assert "llm.reference: 'int8x' is not one of variants" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["validate"]["llm"]["eval_set"] = "nope"
    assert "validate.llm.eval_set: unknown eval set 'nope'" in error_for(tmp_path, bad)


def test_hub_source_needs_revision(tmp_path, base):
    base["models"]["tiny"]["source"] = {"type": "hub", "repo_id": "org/model"}
    assert "models.tiny.source.revision: Field required" in error_for(tmp_path, base)


def test_gate_rule_without_threshold(tmp_path, base):
    base["gate"]["rules"].append({"metric": "perplexity"})
    assert "gate.rules.2: rule for 'perplexity' sets no threshold" in error_for(tmp_path, base)


def test_cli_prints_one_line_per_problem(tmp_path, base):
    base["variants"]["int8"]["bogus"] = 1
    path = write_params(tmp_path, base)
    proc = subprocess.run([sys.executable, "-m", "stages.fetch", "--model", "tiny", "--params", str(path)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"{path}: variants.int8.bogus: unknown key"
    assert not (tmp_path / "models").exists()


def test_npu_refusal_through_export_cli_writes_nothing(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["variants"]["int4-npu"]["group_size"] = 64
    write_params(project, params)
    proc = run_stage("stages.export", "--model", "tiny", "--variant", "int4-npu", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().endswith("variants.int4-npu.targets: NPU needs int4 to be channel-wise symmetric "
                                        "(sym: true, group_size: -1); got sym=True, group_size=64")
    assert_nothing_written(project / "models")


def test_hub_example_builds_a_dag(tmp_path):
    scaffold(tmp_path, yaml.safe_load((REPO / "configs/hub-models.yaml").read_text()))
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "export-llm@qwen2-5-1-5b-instruct-int4-gpu" in proc.stdout
    assert "fetch@phi-3-mini-4k-instruct" in proc.stdout


def test_draft_and_pair_references(tmp_path, base):
    base["derived_drafts"] = {"d1": {"base": "nope", "keep_layers": 1}}
    assert "derived_drafts.d1.base: 'nope' is not an llm in models" in error_for(tmp_path, base)
    base["derived_drafts"] = {"d1": {"base": "tiny", "keep_layers": 1, "distill": {"data": "missing"}}}
    assert "derived_drafts.d1.distill.data: unknown calibration set 'missing'" in error_for(tmp_path, base)
    base["derived_drafts"] = {"d1": {"base": "tiny", "keep_layers": 1}}
    base["drafts"] = {"models": ["d1"], "variants": ["int8"]}
    base["validate"]["speculative"] = {"prompts": ["hi"], "num_assistant_tokens": [3]}
    base["pairs"] = {"p": {"main": "tiny/int8", "draft": "d1/int4"}}
    assert "pairs.p.draft: 'd1/int4' is not built by drafts" in error_for(tmp_path, base)
    base["pairs"] = {"p": {"main": "tiny", "draft": "d1/int8"}}
    assert "pairs.p.main: expected '<model>/<variant>', got 'tiny'" in error_for(tmp_path, base)
    base["pairs"] = {"p": {"main": "tiny/int8", "draft": "d1/int8"}}
    base["gate"]["rules"].append({"family": "speculative", "metric": "acceptance_rate", "min": 0.1, "pairs": ["q"]})
    assert "gate.rules.2.pairs: unknown pair 'q'" in error_for(tmp_path, base)
    base["gate"]["rules"][-1]["pairs"] = ["p"]
    assert load_params(write_params(tmp_path, base)).pairs["p"].artifact("draft") == ("d1", "int8")


@pytest.mark.parametrize("params_file", ["params.yaml", "configs/hub-models.yaml", "configs/image-models.yaml"])
def test_every_params_key_dvc_tracks_exists(tmp_path, params_file):
    """DVC fails a stage whose `params:` key is absent from params.yaml, even where the schema has a default."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    scaffold(tmp_path, yaml.safe_load((REPO / params_file).read_text()))
    missing = [(stage.addressing, key) for stage in Repo(str(tmp_path)).index.stages for dep in stage.deps
               if isinstance(dep, ParamsDependency)
               for key in sorted(set(dep.params) - set(dep.read_params()))]
    assert not missing, missing


def test_dotted_model_name_is_refused(tmp_path, base):
    base["models"]["qwen2.5"] = base["models"].pop("tiny")
    assert "models.qwen2.5: names may use letters, digits, '-' and '_' only" in error_for(tmp_path, base)
