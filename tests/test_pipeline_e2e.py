"""`dvc repro` on the tiny model in a temporary git repo: full run, no-op rerun, one-recipe change."""
import json
import re
import subprocess
import sys

import yaml

from tests.conftest import write_params


def dvc(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def ran(output):
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_repro_then_noop_then_only_changed_variant(project):
    out = dvc("repro", cwd=project)
    expected = {"devices", "evalsets", "speechsets", "fetch@tiny", "gate", "report", "release"} | {
        f"{s}-llm@tiny-{v}" for s in ("export", "validate") for v in ("fp16", "int8", "int4", "int4-npu")}
    assert ran(out) == expected
    report = (project / "reports/summary.md").read_text()
    assert "tiny/int4" in report and "NOT VALIDATED" in report
    plot = json.loads((project / "metrics/plots/llm_accuracy_vs_size.json").read_text())
    assert {p["artifact"] for p in plot} == {"tiny/fp16", "tiny/int8", "tiny/int4", "tiny/int4-npu"}
    assert {p["metric"] for p in plot} == {"perplexity"}

    assert ran(dvc("repro", cwd=project)) == {"devices"}  # always runs; unchanged devices re-run nothing else

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["variants"]["int4"]["group_size"] = 64
    write_params(project, params)
    assert ran(dvc("repro", cwd=project)) == {"devices", "export-llm@tiny-int4", "validate-llm@tiny-int4", "gate",
                                              "report", "release"}
    manifest = json.loads((project / "models/tiny/int4/manifest.json").read_text())
    assert manifest["rt_info"]["openvino_model.xml"]["group_size"] == "64"
