"""Recipe search on the tiny model: candidates as DVC stages (cached: a second search exports nothing), bisection
over ratio, the chosen recipe as a variant, the Pareto plot; and the search's own logic on made-up numbers."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from pydantic import ValidationError

from stages.core.schema import Variant
from stages.search import Budget, Search, bisect_chain, chains, chosen_yaml, summarise
from tests.conftest import REPO, error_line, run_stage

RATIOS = [1.0, 0.75, 0.5, 0.25]


def test_bisection_measures_log_n_and_finds_the_first_passing_member():
    chain = [{"id": i} for i in range(8)]
    for first_pass in range(9):  # 8: none passes
        seen = []

        def passes(c, first_pass=first_pass, seen=seen):
            seen.append(c["id"])
            return c["id"] >= first_pass

        bisect_chain(chain, passes)
        assert len(seen) <= (1 if first_pass == 0 else 4)
        passing = [i for i in seen if i >= first_pass]
        assert (min(passing) if passing else 8) == first_pass


def test_chains_group_by_all_but_ratio_smallest_artifact_first():
    cands = [{"id": f"{g}{r}", "recipe": {"group_size": g, "ratio": r}} for g in (32, 64) for r in (0.5, 1.0, 0.8)]
    cands.append({"id": "int8", "recipe": {"weight_format": "int8"}})
    got = sorted([c["id"] for c in chain] for chain in chains(cands))
    assert got == [["321.0", "320.8", "320.5"], ["641.0", "640.8", "640.5"], ["int8"]]


def test_no_passing_candidate_is_reported_not_chosen():
    search = Search(model="m", budget=Budget(max_increase_pct=5), space=[{"weight_format": ["int8"]}])
    rows = [{"id": "a", "recipe": {}, "status": "failed", "size_bytes": 10, "metrics": {"perplexity": 20.0}}]
    result = summarise("s", search, 10.0, 10.5, rows, 1.0)
    assert result["chosen"] is None and result["verdict"].startswith("no candidate in the space meets perplexity")


def test_a_budget_sets_exactly_one_bound_in_the_gate_terms():
    with pytest.raises(ValidationError, match="exactly one"):
        Budget(metric="wer_clean")
    with pytest.raises(ValidationError, match="exactly one"):
        Budget(max_increase=0.01, max_increase_pct=5)
    assert Budget(metric="wer_clean", max_increase=0.01).limit(0.05) == pytest.approx(0.06)
    assert Budget(metric="retrieval_top1", max_decrease_pct=10).limit(0.8) == pytest.approx(0.72)


def test_a_higher_is_better_budget_chooses_the_smallest_that_stays_above_it():
    search = Search(
        model="m", budget=Budget(metric="retrieval_top1", max_decrease=0.05), space=[{"weight_format": ["int8"]}]
    )
    rows = [
        {"id": "small", "recipe": {}, "status": "failed", "size_bytes": 5, "metrics": {"retrieval_top1": 0.7}},
        {"id": "mid", "recipe": {}, "status": "passed", "size_bytes": 8, "metrics": {"retrieval_top1": 0.78}},
        {"id": "big", "recipe": {}, "status": "passed", "size_bytes": 8, "metrics": {"retrieval_top1": 0.8}},
    ]
    result = summarise("s", search, 0.8, 0.75, rows, 1.0)
    assert result["chosen"]["id"] == "big"  # same size: the better metric first
    assert result["budget"]["bound"] == "retrieval_top1 >= 0.75 (-0.05 vs source)"
    result = summarise("s", search, 0.8, 0.75, rows[:1], 1.0)
    assert result["verdict"] == "no candidate in the space meets retrieval_top1 >= 0.75"


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_checkpoint):
    """The tiny project with its reference built, then one search run twice."""
    from tests.conftest import EVAL_TEXT, scaffold, tiny_params

    root = tmp_path_factory.mktemp("search")
    text = root.parent / f"{root.name}-eval.txt"
    text.write_text(EVAL_TEXT)
    params = tiny_params(tiny_checkpoint, text)
    params["calibration"] = {"calib": {"path": str(text), "max_chars": 2000}}
    scaffold(root, params)
    (root / "search").mkdir(exist_ok=True)  # scaffold made search/chosen
    for name in ("dvc.yaml", "candidates.yaml"):
        shutil.copy(REPO / "search" / name, root / "search" / name)
    space = [
        {"weight_format": ["int8"]},
        {
            "weight_format": ["int4"],
            "group_size": [32, 48],
            "ratio": RATIOS,
            "dataset": ["calib"],
            "awq": [False, True],
        },
    ]
    spec = {"searches": {"tiny-cpu": {"model": "tiny", "budget": {"max_increase_pct": 50}, "space": space}}}
    (root / "search" / "params.yaml").write_text(yaml.safe_dump(spec))
    run = [sys.executable, "-m", "dvc", "repro", "reference@tiny"]
    proc = subprocess.run(run, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [run_stage("stages.search", "run", cwd=root)]
    with (root / "stages/search.py").open("a") as f:  # the strategy changes, the candidate stage does not
        f.write("\n# an edit to the search strategy\n")
    runs.append(run_stage("stages.search", "run", cwd=root))
    return root, runs


def read(root, path):
    return json.loads((root / path).read_text())


def test_search_bisects_chooses_the_smallest_passing_and_writes_a_variant(searched):
    root, _ = searched
    result = read(root, "metrics/search/tiny-cpu.json")
    rows = {r["id"]: r for r in result["rows"]}
    # group 48 divides no layer of the tiny model: refused before any export
    assert sum(r["status"] == "invalid" for r in rows.values()) == 2 * len(RATIOS)
    measured = [r for r in rows.values() if r["status"] in ("passed", "failed")]
    assert result["pruned"] == 2 * len(RATIOS) + 1 - len(measured) and len(measured) <= 1 + 3
    # the AWQ chain: its twin layouts were built (AWQ changes values, not sizes), none smaller than the chosen
    awq = [r for r in rows.values() if r["recipe"].get("awq")]
    assert all(r["status"] == "pruned" for r in awq if r["recipe"].get("group_size") == 32)
    assert any("not smaller than a passing candidate" in r.get("reason", "") for r in awq), awq
    limit = result["budget"]["limit"]
    assert result["budget"]["source"] == read(root, "metrics/reference/tiny.json")["metrics"]["perplexity"]
    for r in measured:
        assert (r["metrics"]["perplexity"] <= limit) == (r["status"] == "passed")
        assert (root / "search/models" / r["id"] / "openvino_model.xml").is_file()
    chosen = result["chosen"]
    assert chosen and chosen["size_bytes"] == min(r["size_bytes"] for r in measured if r["status"] == "passed")
    variant = yaml.safe_load((root / "search/chosen/tiny-cpu.yaml").read_text())["variants"]["tiny-cpu"]
    assert Variant.model_validate(variant).model_dump(exclude_defaults=True, exclude={"targets"}) == chosen["recipe"]
    assert "<svg" in (root / "metrics/search/tiny-cpu-pareto.svg").read_text()
    points = read(root, "metrics/plots/search-tiny-cpu.json")
    assert sorted(p["id"] for p in points) == sorted(r["id"] for r in measured)


def test_a_second_search_exports_nothing_even_after_a_strategy_edit_and_the_candidates_are_dvc_stages(searched):
    root, _ = searched
    result = read(root, "metrics/search/tiny-cpu.json")
    assert result["built"] == 0 and result["restored_from_cache"] >= 1
    listed = yaml.safe_load((root / "search/candidates.yaml").read_text())["candidates"]
    assert set(listed) == {r["id"] for r in result["rows"] if "size_bytes" in r}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "search/dvc.yaml"], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "changed" not in proc.stdout, proc.stdout


def search_error(root, mutate) -> str:
    """The error line of a search run on a mutated copy of the tiny project's search/params.yaml."""
    good = root / "search/params-good.yaml"
    shutil.copy(root / "search/params.yaml", good)
    bad = yaml.safe_load(good.read_text())
    mutate(bad["searches"]["tiny-cpu"])
    (root / "search/params.yaml").write_text(yaml.safe_dump(bad))
    try:
        return error_line(run_stage("stages.search", "run", cwd=root, check=False))
    finally:
        shutil.copy(good, root / "search/params.yaml")


def test_a_space_key_that_is_no_variant_option_is_one_line(searched):
    root, _ = searched
    line = search_error(root, lambda s: s["space"].append({"weight_format": ["int4"], "gropu_size": [32]}))
    assert line == "error: searches.tiny-cpu.space.2.gropu_size: not a variant option (see docs/params-reference.md)"


def test_a_budget_metric_the_family_does_not_record_is_one_line(searched):
    root, _ = searched
    line = search_error(root, lambda s: s["budget"].update(metric="wer_clean"))
    assert line.startswith(
        "error: searches.tiny-cpu.budget.metric: 'wer_clean' is not a validation metric of llm model 'tiny' (have: "
        "perplexity,"
    ), line


def test_the_card_quotes_the_search_only_for_its_unchanged_choice(tmp_path, monkeypatch):
    from stages.release import search_evidence

    def row(ratio, ppl, size):
        recipe = {"weight_format": "int4", "group_size": 64, "ratio": ratio}
        return {
            "id": str(ratio),
            "recipe": recipe,
            "status": "passed",
            "size_bytes": size,
            "metrics": {"perplexity": ppl},
        }

    search = Search(model="m", budget=Budget(max_increase_pct=10), space=[{"weight_format": ["int8"]}])
    result = summarise("m-cpu", search, 68.29, 75.12, [row(0.6, 72.5, 114_552_521), row(0.4, 69.8, 124_246_259)], 9)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "search/chosen").mkdir(parents=True)
    (tmp_path / "search/chosen/m-cpu.yaml").write_text(chosen_yaml(result))
    chosen = Variant.model_validate(yaml.safe_load(chosen_yaml(result))["variants"]["m-cpu"])
    text = search_evidence("m", "m-cpu", chosen)
    assert text.startswith("Chosen by recipe search `m-cpu` (`make search`): the smallest of 2 candidates"), text
    assert "perplexity 72.5, 114.6 MB" in text and "Runners-up" in text and "perplexity 69.8, 124.2 MB" in text
    assert search_evidence("other-model", "m-cpu", chosen) is None
    assert search_evidence("m", "m-cpu", chosen.model_copy(update={"ratio": 0.8})) is None


def test_the_report_shows_each_search_with_its_pareto_plot(tmp_path, monkeypatch):
    from stages.report import TEMPLATES, searches
    from stages.search import write_results

    rows = [
        {
            "id": "a",
            "recipe": {"weight_format": "int8"},
            "status": "passed",
            "size_bytes": 14e7,
            "metrics": {"perplexity": 68.6},
        },
        {
            "id": "b",
            "recipe": {"weight_format": "int4", "group_size": 64},
            "status": "failed",
            "size_bytes": 9e7,
            "metrics": {"perplexity": 86.4},
        },
    ]
    search = Search(model="m", budget=Budget(max_increase_pct=10), space=[{"weight_format": ["int8"]}])
    monkeypatch.chdir(tmp_path)
    write_results(summarise("m-cpu", search, 68.29, 75.12, rows, 42.0))
    [shown] = searches()
    assert shown["choice"].startswith("int8") and "perplexity 68.6, 140.0 MB" in shown["choice"]
    verdict = {"passed": True, "mode": "dev", "counts": {"pass": 1, "fail": 0, "not_validated": 0}, "failed": []}
    empty = dict.fromkeys(["families", "adapters", "pairs", "performance", "plots", "sheets", "times", "notes"], [])
    context = {**empty, "verdict": {**verdict, "released": [], "withheld": []}, "performance_columns": []}
    html = TEMPLATES.get_template("report.html.j2").render(**context, searches=[shown])
    markdown = TEMPLATES.get_template("report.md.j2").render(**context, searches=[shown])
    assert "- **m-cpu** (m on CPU, perplexity <= 75.12 (+10% vs source)): int8" in markdown, markdown
    assert 'data-search="m-cpu"' in html and "<svg" in html
