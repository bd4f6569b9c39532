"""The params schema: every bad input is one line naming the key; families own their settings."""

import copy
import json
import subprocess
import sys

import pytest
import yaml

from stages.check_params import load_checked
from stages.core.errors import BuildError
from stages.params import load_params
from tests.conftest import REPO, assert_nothing_written, run_stage, scaffold, tiny_params, write_params

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export

CONFIGS = ["params.yaml", "configs/hub-models.yaml", "configs/image-models.yaml", "configs/qwen-coder-pair.yaml"]


@pytest.mark.parametrize("params_file", CONFIGS)
def test_shipped_params_and_configs_validate(params_file):
    params = load_checked(REPO / params_file)
    assert params.build and params.built_families()


def test_hub_config_is_all_hub_and_pinned():
    hub = load_checked(REPO / "configs" / "hub-models.yaml")
    assert all(m.source.type == "hub" for m in hub.models.values())


def test_hub_config_has_an_eagle3_route_pinned_to_commits():
    import re

    hub = load_checked(REPO / "configs" / "hub-models.yaml")
    pair = hub.pairs["qwen3-int4-cpu-eagle3"]
    main, draft = (hub.models[a.split("/")[0]] for a in (pair.main, pair.draft))
    assert draft.trust_remote_code and not main.trust_remote_code
    assert draft.source.repo_id == "AngelSlim/Qwen3-1.7B_eagle3" and pair.draft in hub.drafts
    assert all(re.fullmatch(r"[0-9a-f]{40}", m.source.revision) for m in (main, draft))


@pytest.fixture
def base(tmp_path):
    return tiny_params(tmp_path / "ckpt", tmp_path / "t.txt")


def error_for(tmp_path, params, full=True) -> str:
    with pytest.raises(BuildError) as e:
        (load_checked if full else load_params)(write_params(tmp_path, params))
    assert "\n" not in str(e.value).strip() or str(e.value).count(str(tmp_path)) > 1, str(e.value)
    return str(e.value)


def test_unknown_key_is_named(tmp_path, base):
    base["variants"]["int8"]["gropu_size"] = 64
    assert error_for(tmp_path, base).endswith("variants.int8.gropu_size: unknown key")


def test_wrong_type_is_named(tmp_path, base):
    base["variants"]["int4"]["group_size"] = "big"
    assert "variants.int4.group_size:" in error_for(tmp_path, base)


def test_duplicate_key_is_refused_with_its_line(tmp_path, base):
    path = write_params(tmp_path, base)
    text = path.read_text().replace("variants:\n", "variants:\n  int8:\n    weight_format: int8\n", 1)
    path.write_text(text)
    with pytest.raises(BuildError) as e:
        load_params(path)
    assert "duplicate key 'int8'" in str(e.value) and str(path) in str(e.value)


def test_npu_refuses_asymmetric_or_groupwise_int4(tmp_path, base):
    bad = copy.deepcopy(base)
    bad["variants"]["int4-npu"]["sym"] = False
    assert "variants.int4-npu.targets: NPU needs int4 to be channel-wise symmetric" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["variants"]["int4-npu"]["group_size"] = 64
    assert "group_size=64" in error_for(tmp_path, bad)


def test_npu_options_only_for_npu_targets(tmp_path, base):
    base["variants"]["int8"]["npu"] = {"max_prompt_len": 256}
    assert "variants.int8.npu: NPU pipeline options given, but no target is an NPU" in error_for(tmp_path, base)


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
    bad["build"].append("tiny/int3")
    assert "build.4: unknown variant 'int3' in 'tiny/int3'" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["build"].append("nomodel/int8")
    assert "build.4: unknown model 'nomodel'" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["validate"]["llm"]["reference"] = "int8x"
    assert "validate.llm.reference: 'int8x' is not a built variant of llm" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["validate"]["llm"]["eval_set"] = "nope"
    assert "validate.llm.eval_set: unknown eval set 'nope'" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["validate"]["llm"]["contxt_length"] = 64
    assert "validate.llm.contxt_length: unknown key" in error_for(tmp_path, bad)


def test_family_settings_required_for_built_families_only(tmp_path, base):
    bad = copy.deepcopy(base)
    del bad["validate"]["llm"]
    assert "validate.llm: required when build has a llm model" in error_for(tmp_path, bad, full=False)
    bad = copy.deepcopy(base)
    bad["validate"]["whisper"] = {"speech_sets": ["x"]}
    assert "validate.whisper: settings for a family that build does not use" in error_for(tmp_path, bad)


def test_hub_source_needs_revision(tmp_path, base):
    base["models"]["tiny"]["source"] = {"type": "hub", "repo_id": "org/model"}
    assert "models.tiny.source.revision: Field required" in error_for(tmp_path, base)


def test_gate_rule_without_threshold(tmp_path, base):
    base["gate"]["rules"].append({"metric": "perplexity"})
    assert "gate.rules.3: rule for 'perplexity' sets no threshold" in error_for(tmp_path, base)


@pytest.mark.parametrize(
    "rule, message",
    [
        (
            {"family": "llm", "metric": "perplexty", "max": 10},
            "gate.rules.3.metric: 'perplexty' matches no metric of llm",
        ),
        ({"family": "llm", "metric": "wer_*", "max": 10}, "gate.rules.3.metric: 'wer_*' matches no metric of llm"),
        ({"family": "whisper", "metric": "wer_*", "max": 1}, "gate.rules.3.family: build has no whisper model"),
        (
            {"family": "llm", "metric": "perplexity", "variants": ["int9"], "max": 1},
            "gate.rules.3.variants: 'int9' is not a built variant of llm",
        ),
        (
            {"family": "llm", "metric": "perplexity", "against": "fp32", "max_increase_pct": 1},
            "gate.rules.3.against: 'fp32' is neither 'source', 'cpu-path'",
        ),
        (
            {"family": "llm", "metric": "generation_similarity", "max_decrease": 0.1},
            "gate.rules.3: 'generation_similarity' already compares with `against`",
        ),
    ],
)
def test_rules_name_real_metrics_variants_and_references(tmp_path, base, rule, message):
    base["gate"]["rules"].append(rule)
    assert message in error_for(tmp_path, base)


def test_cli_prints_one_line_per_problem(tmp_path, base):
    base["variants"]["int8"]["bogus"] = 1
    path = write_params(tmp_path, base)
    proc = subprocess.run(
        [sys.executable, "-m", "stages.fetch", "--model", "tiny", "--params", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {path}: variants.int8.bogus: unknown key"
    assert not (tmp_path / "models").exists()


def test_debug_switch_prints_the_traceback(tmp_path, base):
    base["variants"]["int8"]["bogus"] = 1
    path = write_params(tmp_path, base)
    proc = subprocess.run(
        [sys.executable, "-m", "stages.check_params", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**__import__("os").environ, "OVBUILD_DEBUG": "1"},
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "bogus: unknown key" in proc.stderr


def test_npu_refusal_through_export_cli_writes_nothing(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["variants"]["int4-npu"]["group_size"] = 64
    write_params(project, params)
    proc = run_stage("stages.export", "--artifact", "tiny/int4-npu", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith(
        "variants.int4-npu.targets: NPU needs int4 to be channel-wise symmetric "
        "(sym: true, group_size: -1); got sym=True, group_size=64"
    )
    assert_nothing_written(project / "models")


def test_hub_config_builds_a_dag(tmp_path):
    scaffold(tmp_path, yaml.safe_load((REPO / "configs/hub-models.yaml").read_text()))
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "export@qwen2-5-1-5b-instruct/int4-gpu" in proc.stdout
    assert "fetch@phi-3-mini-4k-instruct" in proc.stdout


def test_draft_and_pair_references(tmp_path, base):
    base["derived_drafts"] = {"d1": {"base": "nope", "teacher": "tiny", "keep_layers": 1}}
    assert "derived_drafts.d1.base: 'nope' is not an llm in models" in error_for(tmp_path, base)
    base["derived_drafts"] = {
        "d1": {"base": "tiny", "teacher": "tiny", "keep_layers": 1, "distill": {"data": "missing"}}
    }
    assert "derived_drafts.d1.distill.data: unknown calibration set 'missing'" in error_for(tmp_path, base)
    base["derived_drafts"] = {"d1": {"base": "tiny", "teacher": "tiny", "keep_layers": 1}}
    base["drafts"] = ["d1/int8"]
    base["validate"]["speculative"] = {"prompts": ["hi"], "num_assistant_tokens": [3]}
    base["pairs"] = {"p": {"main": "tiny/int8", "draft": "d1/int4"}}
    assert "pairs.p.draft: 'd1/int4' is not in drafts" in error_for(tmp_path, base)
    base["pairs"] = {"p": {"main": "tiny", "draft": "d1/int8"}}
    assert "pairs.p.main:" in error_for(tmp_path, base)
    base["pairs"] = {"p": {"main": "tiny/int8", "draft": "d1/int8"}}
    base["gate"]["rules"].append({"family": "speculative", "metric": "acceptance_rate", "min": 0.1, "pairs": ["q"]})
    assert "gate.rules.3.pairs: unknown pair 'q'" in error_for(tmp_path, base)
    base["gate"]["rules"][-1]["pairs"] = ["p"]
    base["gate"]["rules"].append({"family": "speculative", "metric": "tpot_speedup", "min": 1.5})
    assert "gate.rules.4.metric: 'tpot_speedup' matches no pair metric" in error_for(tmp_path, base)
    base["gate"]["rules"].pop()
    assert load_checked(write_params(tmp_path, base)).pairs["p"].draft == "d1/int8"


def test_release_mode_cannot_accept_emulation(tmp_path, base):
    base["gate"].update(mode="release", accept_emulated=True)
    assert "gate.accept_emulated: release mode requires real target devices" in error_for(tmp_path, base)


@pytest.mark.parametrize("params_file", CONFIGS)
def test_every_params_key_dvc_tracks_exists(tmp_path, params_file):
    """DVC fails a stage whose `params:` key is absent from params.yaml, even where the schema has a default."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    scaffold(tmp_path, yaml.safe_load((REPO / params_file).read_text()))
    missing = [
        (stage.addressing, key)
        for stage in Repo(str(tmp_path)).index.stages
        for dep in stage.deps
        if isinstance(dep, ParamsDependency)
        for key in sorted(set(dep.params) - set(dep.read_params()))
    ]
    assert not missing, missing


def test_dotted_model_name_is_refused(tmp_path, base):
    base["models"]["qwen2.5"] = base["models"].pop("tiny")
    assert "models.qwen2.5: names may use letters, digits, '-' and '_' only" in error_for(tmp_path, base)


def test_generated_params_reference_is_current():
    """docs/params-reference.md and docs/params.schema.json are what scripts/params_reference.py writes now."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("params_reference", REPO / "scripts" / "params_reference.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (REPO / "docs/params-reference.md").read_text() == generator.reference(), (
        "docs/params-reference.md is stale: run scripts/params_reference.py"
    )
    schema = json.dumps(generator.Params.model_json_schema(by_alias=True), indent=1) + "\n"
    assert (REPO / "docs/params.schema.json").read_text() == schema, "docs/params.schema.json is stale"


@pytest.mark.parametrize("path", [*CONFIGS, "dvc.yaml", "perf/dvc.yaml"])
def test_dvc_reads_every_shipped_yaml_with_libyaml_as_we_read_it(path):
    """DVC parses params.yaml once per stage: with libyaml (ruamel.yaml.clib) a no-op `dvc status` takes 1.9 s
    instead of 4.1 s here. libyaml is stricter than PyYAML (`[pypi:x]` is an error): every shipped file parses."""
    from ruamel.yaml import YAML

    dvc_yaml = YAML(typ="safe")  # what dvc.utils.serialize.parse_yaml uses
    assert dvc_yaml.Parser.__module__.startswith("ruamel.yaml.clib"), "libyaml is not installed"
    text = (REPO / path).read_text()
    assert dvc_yaml.load(text) == yaml.safe_load(text)


def test_prompt_references_name_a_prompt_set_or_a_file(tmp_path, base):
    speculative = {"prompts": ["p"], "num_assistant_tokens": [2]}
    bad = copy.deepcopy(base)
    bad["validate"]["speculative"] = speculative
    bad["prompt_lookup"] = {"look": {"main": "tiny/fp16", "prompts": "nope"}}
    assert "prompt_lookup.look.prompts: unknown prompt set 'nope' (prompt_sets)" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["prompt_sets"] = {"v1.2": {"path": "prompts/code-completion.jsonl"}}
    assert "prompt_sets.v1.2: names may use letters, digits" in error_for(tmp_path, bad)
    bad = copy.deepcopy(base)
    bad["prompt_sets"] = {"p": {"type": "hf", "path": "org/x", "colum": "text"}}
    assert "prompt_sets.p.colum: unknown key" in error_for(tmp_path, bad)

    images = yaml.safe_load((REPO / "configs/image-models.yaml").read_text())
    for key, ref, expected in (
        ("prompts", "t2i", "validate.text2image.prompts: unknown prompt set 't2i' (prompt_sets;"),
        ("prompts", "prompts/missing.txt", "validate.text2image.prompts: file not found: prompts/missing.txt"),
    ):
        bad = copy.deepcopy(images)
        bad["validate"]["text2image"][key] = ref
        assert expected in error_for(tmp_path, bad)
    bad = copy.deepcopy(images)
    bad["validate"]["vlm"]["questions"] = "questions"
    assert "validate.vlm.questions: unknown prompt set 'questions'" in error_for(tmp_path, bad)
    images["prompt_sets"] = {"t2i": {"path": "prompts/text2image.txt"}}
    images["validate"]["text2image"]["prompts"] = "t2i"
    load_checked(write_params(tmp_path, images))


def test_local_prompt_sets_are_materialised_verbatim(project):
    """A .jsonl prompt keeps its newlines; every consumer reads data/prompts/<name>.jsonl."""
    from stages.core.textdata import read_prompts

    (project / "code.jsonl").write_text(json.dumps("def f(x):\n    return x\n") + "\n")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["prompt_sets"] = {"code": {"path": "code.jsonl"}, "plain": {"path": str(REPO / "prompts/text2image.txt")}}
    write_params(project, params)
    run_stage("stages.evalsets")
    assert read_prompts("code", "k") == ["def f(x):\n    return x\n"]
    assert read_prompts("plain", "k") == read_prompts(str(REPO / "prompts/text2image.txt"), "k")
    manifest = json.loads((project / "data/prompts/manifest.json").read_text())
    assert manifest["code"] == {"path": "code.jsonl", "prompts": 1, "sha256": manifest["code"]["sha256"]}
    (project / "data/prompts/code.jsonl").unlink()
    with pytest.raises(BuildError, match=r"prompt set 'code' not built; run `dvc repro evalsets`"):
        read_prompts("code", "k")
