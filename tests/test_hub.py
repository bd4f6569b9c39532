"""The hub fetch over HTTP: stages.fetch against tests/hub_server.py (a hub-compatible server on 127.0.0.1)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from stages.core.io import sha256_file
from tests.conftest import HUB_TOKEN, assert_nothing_written, error_line, hub_env, run_stage, write_params
from tests.hub_server import free_port


def hub_source(project, revision="main", repo_id="org/tiny", **patterns):
    params = yaml.safe_load((project / "params.yaml").read_text())
    source = {"type": "hub", "repo_id": repo_id, "revision": revision, **patterns}
    params["models"]["tiny"] = {"family": "llm", "source": source}
    write_params(project, params)


def fetch(project, url, tmp_path, check=True):
    return run_stage("stages.fetch", "--model", "tiny", check=check, env=hub_env(url, tmp_path / "hf-home"))


def manifest(project) -> dict:
    return json.loads((project / "models/tiny/checkpoint/manifest.json").read_text())


@pytest.mark.parametrize("revision", ["main", "v1.0", "dev-sha"])
def test_fetch_at_a_branch_a_tag_and_a_commit_records_the_resolved_commit(
    project, hub, tmp_path, tiny_checkpoint, revision
):
    revision = hub.commits["dev"] if revision == "dev-sha" else revision
    hub_source(project, revision)
    fetch(project, hub.url, tmp_path)
    m = manifest(project)
    expected = hub.commits.get(revision, revision)
    assert (m["requested_revision"], m["resolved_revision"]) == (revision, expected)
    files = {f["path"]: f for f in m["files"]}
    assert files["model.safetensors"]["sha256"] == sha256_file(tiny_checkpoint / "model.safetensors")
    # what each revision holds: the tag has no README, only the dev branch has notes.txt
    assert ("README.md" in files, "notes.txt" in files) == {
        "main": (True, False),
        "v1.0": (False, False),
        hub.commits["dev"]: (True, True),
    }[revision]
    assert json.loads((project / "data/sources/tiny.json").read_text())["resolved_revision"] == expected


def test_allow_and_ignore_patterns_select_what_is_downloaded(project, hub, tmp_path):
    hub_source(project, "dev", ignore_patterns=["*.txt", "README.md"])
    fetch(project, hub.url, tmp_path)
    assert {"notes.txt", "README.md"}.isdisjoint(f["path"] for f in manifest(project)["files"])
    hub_source(project, "dev", allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    fetch(project, hub.url, tmp_path)
    paths = {f["path"] for f in manifest(project)["files"]}
    assert "model.safetensors" in paths and "config.json" in paths
    assert {"notes.txt", "README.md"}.isdisjoint(paths)


@pytest.mark.parametrize(
    "repo_id, revision, allow, expected",
    [
        ("org/missing", "main", None, "source: org/missing@main: repository not found"),
        ("org/tiny", "no-such-branch", None, "source: org/tiny@no-such-branch: revision 'no-such-branch' not found"),
        ("org/tiny", "0" * 40, None, f"source: org/tiny@{'0' * 40}: revision '{'0' * 40}' not found"),
        (
            "org/tiny",
            "main",
            ["config.json", "model.safetensors", "tokenizer.json", "missing.json"],
            "source: org/tiny@main: file not found in the repository: missing.json",
        ),
        ("org/tiny", "v1.0", ["*.gguf"], "source: org/tiny@v1.0: no file matches allow_patterns"),
    ],
    ids=["unknown-repo", "unknown-branch", "unknown-sha", "missing-file", "nothing-matches"],
)
def test_hub_errors_are_one_line_naming_repo_and_revision(project, hub, tmp_path, repo_id, revision, allow, expected):
    hub_source(project, revision, repo_id, **({"allow_patterns": allow} if allow else {}))
    line = error_line(fetch(project, hub.url, tmp_path, check=False))
    assert line.startswith(f"error: {expected}"), line
    assert_nothing_written(project / "models")


def test_hub_down_is_one_line(project, tmp_path):
    hub_source(project, "main")
    line = error_line(fetch(project, f"http://127.0.0.1:{free_port()}", tmp_path, check=False))
    assert line.startswith("error: source: org/tiny@main: ") and "unreachable" in line, line
    assert_nothing_written(project / "models")


@pytest.mark.parametrize("repo", ["gated", "private"])
@pytest.mark.parametrize("token", [None, "hf_wrong_token_value_42"])
def test_gated_or_private_repo_without_the_right_token_names_hf_token(project, hub, tmp_path, repo, token):
    hub_source(project, "main", f"org/{repo}")
    proc = run_stage(
        "stages.fetch", "--model", "tiny", check=False, env={**hub_env(hub.url, tmp_path / "hf"), "HF_TOKEN": token}
    )
    line = error_line(proc)
    assert line.startswith(f"error: source: org/{repo}@main: ") and "HF_TOKEN" in line, line
    assert token is None or token not in proc.stdout + proc.stderr
    assert_nothing_written(project / "models")


def test_the_token_opens_gated_and_private_repos_and_is_never_written(project, hub, tmp_path):
    for repo in ("gated", "private"):
        hub_source(project, "main", f"org/{repo}")
        env = {**hub_env(hub.url, tmp_path / "hf"), "HF_TOKEN": HUB_TOKEN}
        proc = run_stage("stages.fetch", "--model", "tiny", env=env)
        assert HUB_TOKEN not in proc.stdout + proc.stderr
        assert manifest(project)["repo_id"] == f"org/{repo}"
    written = [p for p in project.rglob("*") if p.is_file() and ".git" not in p.parts]
    assert not [p for p in written if HUB_TOKEN.encode() in p.read_bytes()]


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_pickle_weights_are_not_even_downloaded_unless_allowed(project, hub, tmp_path, allow_pickle):
    params = yaml.safe_load((project / "params.yaml").read_text())
    source = {"type": "hub", "repo_id": "org/pickled", "revision": "main"}
    params["models"]["tiny"] = {"family": "llm", "source": source, "allow_pickle": allow_pickle}
    write_params(project, params)
    fetch(project, hub.url, tmp_path)
    assert ("pytorch_model.bin" in {f["path"] for f in manifest(project)["files"]}) == allow_pickle
    assert bool(list((tmp_path / "hf-home").rglob("pytorch_model.bin"))) == allow_pickle


def test_a_download_cut_off_mid_file_leaves_no_checkpoint_and_the_next_run_completes(
    project, hub, tmp_path, tiny_checkpoint
):
    faults = hub.root / "hub-server.json"
    saved = faults.read_text()
    hub_source(project, "main", "org/cut")
    try:  # the first GET of model.safetensors stops after 100 kB, every resumed one at once
        faults.write_text(json.dumps({**json.loads(saved), "cut": {"models/org/cut/model.safetensors": 100_000}}))
        line = error_line(fetch(project, hub.url, tmp_path, check=False))
        assert line.startswith("error: source: org/cut@main: download failed"), line
        assert_nothing_written(project / "models")
    finally:
        faults.write_text(saved)
    fetch(project, hub.url, tmp_path)
    files = {f["path"]: f["sha256"] for f in manifest(project)["files"]}
    assert files["model.safetensors"] == sha256_file(tiny_checkpoint / "model.safetensors")


def test_an_openvino_ir_repo_keeps_its_ir_weights(project, hub, tmp_path):
    """A hub draft that already is an OpenVINO IR (FastDraft style): openvino_model.bin is raw tensors, not a pickle
    to skip, and there are no safetensors."""
    hub_source(project, "main", "org/ir-draft")
    fetch(project, hub.url, tmp_path)
    paths = {f["path"] for f in manifest(project)["files"]}
    assert {"openvino_model.xml", "openvino_model.bin"} <= paths and "model.safetensors" not in paths


@pytest.fixture(scope="session")
def hub_lora(hub, tiny_checkpoint, tmp_path_factory):
    """`org/tiny-lora` on the hub server: a random PEFT LoRA for the tiny model (with its adapter_config.json),
    tagged `v1`. The server finds repos at each request, so adding one to its root is enough."""
    from tests import hub_server
    from tests.test_lora import random_lora

    lora = random_lora(tiny_checkpoint, tmp_path_factory.mktemp("lora") / "a", 1, ["q_proj", "v_proj"])
    files = {p.name: p.read_bytes() for p in lora.iterdir() if p.is_file()}
    commits = hub_server.git_repo(hub.root / "models" / "org" / "tiny-lora", [("adapter tag:v1", files)])
    return lora, commits["v1"]


@pytest.mark.parametrize(
    "revision, filename, error",
    [
        ("v1", "adapter_model.safetensors", None),
        ("no-such-tag", "adapter_model.safetensors", "revision 'no-such-tag' not found in org/tiny-lora"),
        ("v1", "nope.safetensors", "file not found in the repository: nope.safetensors"),
    ],
)
def test_a_lora_adapter_from_the_hub(project, hub, hub_lora, tmp_path, revision, filename, error):
    lora, _commit = hub_lora
    params = yaml.safe_load((project / "params.yaml").read_text())
    source = {"type": "hub", "repo_id": "org/tiny-lora", "revision": revision, "filename": filename}
    params["adapters"] = {"hub-lora": {"model": "tiny", "source": source}}
    write_params(project, params)
    run_stage("stages.evalsets")
    run_stage("stages.fetch", "--model", "tiny")  # the local tiny checkpoint the adapter is checked against
    proc = run_stage("stages.adapter", "--adapter", "hub-lora", check=False, env=hub_env(hub.url, tmp_path / "hf-home"))
    if error:
        line = error_line(proc)
        assert line == f"error: source: org/tiny-lora@{revision}: {error}", line
        assert_nothing_written(project / "models/adapters")
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((project / "models/adapters/hub-lora/manifest.json").read_text())
    assert m["sha256"] == sha256_file(lora / "adapter_model.safetensors")
    assert m["alpha"] == 8 / 4  # lora_alpha / r from the adapter_config.json that came along
    assert m["reference"]["perplexity"] != m["reference"]["perplexity_base"]


def test_the_hub_server_serves_datasets_load_dataset_at_a_revision(hub, tmp_path):
    """What the `datasets` source type (issue 14, part 2) will call: load_dataset through HF_ENDPOINT, pinned."""
    code = (
        "import sys, datasets; ds = datasets.load_dataset('org/wikitext-tiny', 'tiny-raw-v1', split='test', "
        "revision=sys.argv[1]); print(len(ds), repr(ds[1]['text']))"
    )
    for revision, rows in (("v1", 2), ("main", 3), (hub.commits["dataset v1"], 2)):
        env = {k: v for k, v in {**os.environ, **hub_env(hub.url, tmp_path / "hf-home")}.items() if v is not None}
        proc = subprocess.run([sys.executable, "-c", code, revision], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.split("\n")[-2] == f"{rows} ' The game began in 2010 .\\n'", proc.stdout[-2000:]
