"""The report page in a real headless browser: Debian's chromium driven by selenium through chromium-driver (both
installed by scripts/setup.sh; nothing is downloaded at test time). The report stage renders the page from the
committed results (metrics/gate.json, metrics/validate, metrics/reference, metrics/perf, release/manifest.json) in a
throw-away copy, as committed and with one gate check turned into a failure; the browser then checks that the page
loads, logs no console error, opens with the verdict (the gate status of metrics/gate.json, released / withheld and
why, what failed where) above every table and plot, and labels every plot point model/variant (device)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from stages.core.errors import TIMINGS_ENV
from tests.conftest import REPO, run_stage

CHROMIUM = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if p and Path(p).is_file()), None)
CHROMEDRIVER = shutil.which("chromedriver")
DEVICE_LABEL = re.compile(r"^\S+ \((CPU|GPU|NPU)\)$")  # a point label: "<name> (<device>)"
MODEL_VARIANT = re.compile(r"^[^/\s]+/[^/\s]+ \((CPU|GPU|NPU)\)$")


def fail_one_check(gate: dict) -> dict:
    """The committed gate with its first passing check on a variant turned into a failure."""
    row = next(r for r in gate["rows"] if r["status"] == "pass" and "/" in r["artifact"])
    row.update(status="fail", note="failed on purpose by the browser test")
    gate["counts"] = {**gate["counts"], "pass": gate["counts"]["pass"] - 1, "fail": gate["counts"]["fail"] + 1}
    return {**gate, "passed": False}


@pytest.fixture(scope="module", params=["as-committed", "one-check-failed"])
def rendered(request, tmp_path_factory) -> Path:
    """A copy of what the report stage reads, rendered by `python -m stages.report`; the project root."""
    root = tmp_path_factory.mktemp(request.param) / "project"
    root.mkdir()
    for name in ("params.yaml", "stages", "prompts", "metrics", "release/manifest.json", "data/sources/README.md"):
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst)
    shutil.rmtree(root / "metrics/plots")  # the stage's own output: written again below
    # the export manifests are DVC outputs, not in git: their size is copied into every validate record
    for record in (root / "metrics/validate").glob("*/*.json"):
        if record.parent.name != "pairs":
            data = json.loads(record.read_text())
            manifest = root / "models" / data["artifact"] / "manifest.json"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(json.dumps({"size_bytes": data["size_bytes"]}))
    if request.param == "one-check-failed":
        gate = root / "metrics/gate.json"
        gate.write_text(json.dumps(fail_one_check(json.loads(gate.read_text())), indent=1))
    run_stage("stages.report", cwd=root, env={TIMINGS_ENV: str(root / "no-timings.jsonl")})
    return root


@pytest.fixture(scope="module")
def browser():
    """Headless chromium; fails (never skips) when it is missing or cannot start."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(
            f"no headless browser (chromium: {CHROMIUM}, chromedriver: {CHROMEDRIVER}): run `make setup`, "
            "which apt-installs Debian's chromium and chromium-driver",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as e:
        pytest.fail(f"headless chromium did not start ({CHROMIUM} via {CHROMEDRIVER}): {e.msg}", pytrace=False)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def page(rendered, browser):
    """The report opened in the browser, its console log read (and so emptied) right after the load."""
    browser.get((rendered / "reports/index.html").as_uri())
    return browser, browser.get_log("browser")


def test_page_loads_without_console_errors(page):
    driver, log = page
    assert not driver.current_url.startswith("chrome-error://"), driver.current_url
    assert driver.title == "Artifact report"
    assert driver.execute_script("return document.readyState") == "complete"
    severe = [f"{e['source']}: {e['message']}" for e in log if e["level"] == "SEVERE"]
    assert not severe, "console errors on the report page:\n" + "\n".join(severe)


def test_page_opens_with_the_verdict_of_the_gate(page, rendered):
    driver, _ = page
    gate = json.loads((rendered / "metrics/gate.json").read_text())
    release = json.loads((rendered / "release/manifest.json").read_text())
    # the first section heading in document order is the verdict's; nothing that carries results comes before it
    first = driver.execute_script("""
        const h = document.querySelector('body h2');
        const v = document.getElementById('verdict');
        const before = [...document.querySelectorAll('table, figure, svg, img, details, pre')]
            .filter(el => !v.contains(el) && (el.compareDocumentPosition(v) & Node.DOCUMENT_POSITION_FOLLOWING));
        return {heading: h.textContent, inVerdict: v.contains(h), before: before.map(el => el.outerHTML.slice(0, 80)),
                top: v.getBoundingClientRect().top, viewport: window.innerHeight};""")
    assert first["heading"] == "Verdict" and first["inVerdict"], first
    assert first["before"] == [], f"results above the verdict: {first['before']}"
    assert 0 <= first["top"] < first["viewport"] / 2, f"the verdict is not at the top of the page: {first}"
    text = driver.find_element("id", "verdict").text
    status = "PASSED" if gate["passed"] else "FAILED"
    c = gate["counts"]
    assert text.startswith(
        f"Verdict\nGate {status} (mode {gate['mode']}): {c['pass']} checks passed, {c['fail']} "
        f"failed, {c['not_validated']} not validated."
    ), text
    assert f"Released {release['released']}, withheld {release['withheld']}." in text
    for a in release["artifacts"]:
        assert (f"{a['name']}: {a['reason']}" in text) != a["released"], a["name"]  # every withheld one, with why
    failed = [r for r in gate["rows"] if r["status"] == "fail"]
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#verdict table tr')].slice(1)"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )
    assert [r[:3] for r in rows] == [[r["artifact"], r["device"], r["metric"]] for r in failed]  # what failed, where


def test_every_plot_labels_its_points_model_variant(page, rendered):
    driver, _ = page
    points = [
        p
        for kind in ("accuracy", "latency")
        for p in json.loads((rendered / f"metrics/plots/{kind}_vs_size.json").read_text())
    ]
    figures = driver.execute_script("""
        return [...document.querySelectorAll('figure.plot')].map(f => ({
            family: f.dataset.family, metric: f.dataset.metric,
            width: f.querySelector('svg').getBoundingClientRect().width,
            texts: [...f.querySelectorAll('svg text')].map(t => t.textContent.trim())}));""")
    assert len(figures) == len({(p["family"], p["metric"]) for p in points}) > 0
    for fig in figures:
        assert fig["width"] > 100, fig  # drawn, not an empty box
        expected = {
            f"{p['artifact']} ({p['device']})"
            for p in points
            if (p["family"], p["metric"]) == (fig["family"], fig["metric"])
        }
        assert expected and all(MODEL_VARIANT.match(x) for x in expected), expected
        labels = {t for t in fig["texts"] if DEVICE_LABEL.match(t)}
        assert labels == expected, f"{fig['family']} {fig['metric']}: points labelled {sorted(labels)}"
