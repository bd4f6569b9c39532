"""`dvc repro` on the tiny model in a temporary git repo: full run, no-op rerun, one-recipe change, one family
setting change, a code change (dvc status names the stages)."""

import json
import shutil

import yaml

from tests.conftest import dvc, ran, write_params


def test_repro_then_noop_then_only_changed_variant(built):
    out = dvc("repro", cwd=built)
    artifacts = ("fp16", "int8", "int4", "int4-npu")
    assert ran(out) == {"devices", "gate", "release"} | {f"validate@tiny/{v}" for v in artifacts}
    gate = json.loads((built / "metrics/gate.json").read_text())
    assert gate["passed"] and gate["artifacts"]["tiny/int4-npu"]["devices"]["NPU"]["status"] == "emulated"

    assert ran(dvc("repro", cwd=built)) == {"devices"}  # always runs; unchanged devices re-run nothing else

    params = yaml.safe_load((built / "params.yaml").read_text())
    params["variants"]["int4"]["group_size"] = 64
    write_params(built, params)
    assert ran(dvc("repro", cwd=built)) == {
        "devices",
        "params",
        "plan",
        "export@tiny/int4",
        "validate@tiny/int4",
        "gate",
        "release",
    }
    manifest = json.loads((built / "models/tiny/int4/manifest.json").read_text())
    assert manifest["rt_info"]["openvino_model.xml"]["group_size"] == "64"

    # a runtime option of one variant re-validates it, never re-exports
    params["variants"]["int4-npu"]["npu"]["min_response_len"] = 32
    write_params(built, params)
    assert ran(dvc("repro", cwd=built)) == {"devices", "params", "plan", "validate@tiny/int4-npu", "gate", "release"}


def test_editing_a_family_module_marks_its_stages_changed(built):
    dvc("repro", cwd=built)
    with (built / "stages/families/llm.py").open("a") as f:
        f.write("\n# an edit\n")
    status = dvc("status", cwd=built)
    for stage in ("params:", "plan:", "export@tiny/int8:", "validate@tiny/int8:", "reference@tiny:", "gate:"):
        assert stage in status, status
    assert "fetch@tiny:" not in status and "evalsets:" not in status  # they run no family code


def test_moving_a_built_clone_keeps_dvc_status_clean(built, tmp_path):
    dvc("repro", cwd=built)
    moved = tmp_path / "elsewhere" / "clone"
    shutil.move(str(built), moved)
    status = dvc("status", cwd=moved)
    assert (
        status.strip()
        in ("Data and pipelines are up to date.", "devices:\n\tchanged deps:\n\t\tmodified:  always_changed")
        or "always changed" in status
    ), status


def locked_outputs(root) -> dict[tuple[str, str], str]:
    """(stage, output path) -> md5, as dvc.lock records them."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {(stage, out["path"]): out.get("md5") for stage, entry in lock.items() for out in entry.get("outs", [])}


def test_two_folders_build_identical_bytes(built, tmp_path_factory, tiny_checkpoint):
    """The same params built from scratch in another folder: every stage's outputs hash identically (no path,
    time, host or PID in any output; seeded, deterministic builders)."""
    from tests.conftest import scaffold

    dvc("repro", cwd=built)
    params = yaml.safe_load((built / "params.yaml").read_text())
    other = tmp_path_factory.mktemp("second-folder") / "somewhere" / "else"
    other.mkdir(parents=True)
    scaffold(other, params)
    dvc("repro", cwd=other)
    first, second = locked_outputs(built), locked_outputs(other)
    assert first.keys() == second.keys()
    differing = sorted(k for k in first if first[k] != second[k])
    assert not differing, differing
