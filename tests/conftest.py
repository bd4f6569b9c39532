import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Two xdist workers share two cores: PyTorch's OpenMP threads otherwise spin while they wait, and each worker's
# spinning steals the other's core. Measured here, 150 steps of the tiny LLaVA: 3.7 s alone, 39 s each beside a
# second such process, 7.3 s each with passive waiting (8.7 s alone: so the build, one stage at a time, keeps the
# default). It changes no result (the work split depends on the thread count, not on how idle threads wait); it
# must be set before torch loads, and stage subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# DVC stage commands say `python`: make it this interpreter
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
EVAL_TEXT = (
    "The committee met on Tuesday to discuss the budget. After a long debate, the members agreed "
    "that the library should stay open on weekends, and that the new reading room would be finished "
    "before winter. Everyone went home tired but satisfied. "
) * 6


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from stages.core.tiny import tiny_llm

    return tiny_llm(tmp_path_factory.mktemp("tiny") / "tiny-llm")


def no_optional_sections() -> dict:
    """The params sections dvc.yaml iterates over or reads, all empty (a build without them)."""
    return {
        "calibration": {},
        "speech_sets": {},
        "prompt_sets": {},
        "adapters": {},
        "derived_drafts": {},
        "drafts": [],
        "pairs": {},
        "prompt_lookup": {},
    }


def tiny_params(checkpoint: Path, text_file: Path) -> dict:
    return {
        "models": {"tiny": {"family": "llm", "source": {"type": "local", "path": str(checkpoint)}}},
        "variants": {
            "fp16": {"weight_format": "fp16"},
            "int8": {"weight_format": "int8"},
            "int4": {"weight_format": "int4", "group_size": 32, "sym": False, "ratio": 1.0},
            "int4-npu": {
                "weight_format": "int4",
                "target": "NPU",
                "group_size": -1,
                "sym": True,
                "npu": {"max_prompt_len": 64, "min_response_len": 16},
            },
        },
        "build": ["tiny/fp16", "tiny/int8", "tiny/int4", "tiny/int4-npu"],
        "eval_sets": {"text": {"path": str(text_file), "max_chars": 2000}},
        **no_optional_sections(),
        # performance runs in perf/dvc.yaml; only the tests about it run that pipeline
        "validate": {
            "inference_precision": "f32",
            "proxy_device": "CPU",
            "performance": False,
            "emulate": ["NPU"],
            "llm": {
                "reference": "fp16",
                "eval_set": "text",
                "context_length": 64,
                "max_tokens": 256,
                "max_new_tokens": 8,
                "prompts": ["Paris is", "def main():"],
            },
        },
        "gate": {
            "mode": "dev",
            "rules": [
                {"family": "llm", "metric": "perplexity", "max": 1e9},
                {
                    "family": "llm",
                    "metric": "perplexity",
                    "against": "source",
                    "variants": ["fp16"],
                    "max_increase_pct": 1,
                },
                {"family": "llm", "metric": "perplexity", "variants": ["int8"], "max_increase_pct": 50},
            ],
        },
    }


def trained_lora(data: str = "train") -> dict:
    """An `adapters` entry: a LoRA on the tiny model trained for 4 steps on calibration set `data`."""
    source = {"type": "train", "data": data, "rank": 4, "lora_alpha": 8, "steps": 4, "seq_len": 32, "batch_size": 2}
    return {"model": "tiny", "source": {**source, "learning_rate": 0.05}}


def distilled_draft(data: str, steps: int = 20, chat_samples: int = 8) -> dict:
    """A `derived_drafts` entry: the tiny model pruned to one layer and distilled on calibration set `data`."""
    distill = {"data": data, "steps": steps, "seq_len": 16, "batch_size": 4, "learning_rate": 3e-3}
    return {
        "base": "tiny",
        "teacher": "tiny",
        "keep_layers": 1,
        "distill": {**distill, "chat_samples": chat_samples, "reply_tokens": 8},
    }


def scaffold(root: Path, params: dict) -> Path:
    """A throw-away copy of the pipeline (dvc.yaml + stages/) with these params, as a git + DVC repo."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "perf").mkdir(exist_ok=True)
    shutil.copy(REPO / "perf" / "dvc.yaml", root / "perf" / "dvc.yaml")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "prompts", root / "prompts")
    for keep in (
        "models/adapters/README.md",
        "data/sources/README.md",
        "search/chosen/README.md",
        "metrics/search/README.md",
    ):
        (root / keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / keep, root / keep)
    write_params(root, params)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@t"],
        ["git", "config", "user.name", "t"],
        [sys.executable, "-m", "dvc", "init", "-q"],
    ):
        subprocess.run(cmd, cwd=root, check=True)
    return root


HUB_TOKEN = "hf_test_secret_0123456789abcdef"  # the token the hub server's gated and private repos accept


@pytest.fixture(scope="session")
def hub(tmp_path_factory, tiny_checkpoint):
    """A hub-compatible HTTP server (tests/hub_server.py) on 127.0.0.1 serving `org/tiny`: the tiny checkpoint
    tagged `v1.0`, then a README on `main`, and a branch `dev` with a notes file; the checkpoint again as
    `org/gated` and `org/private` (served with HUB_TOKEN only), `org/cut` (for dropped connections) and
    `org/pickled` (with a pytorch_model.bin beside the safetensors) and `org/ir-draft` (an OpenVINO IR); the
    dataset `org/wikitext-tiny` (config `tiny-raw-v1`, split `test`: 2 rows at tag `v1`, 3 on `main`) `org/eval-text` (EVAL_TEXT, a sentence per row, tag `v1`) and `org/speech-tiny` (3 utterances, parquet with
    audio bytes as the hub stores them, tag `v1`), `org/captions` (6 rows of caption / question / id, the second
    caption empty, tag `v1`). Yields a namespace with `url`, `root` (its
    hub-server.json sets faults) and `commits` ({"v1.0" | "main" | "dev" | "dataset v1" | "eval v1" | "speech v1" | "captions v1": sha}); stopped at the end of the session."""
    from types import SimpleNamespace

    from tests import hub_server

    root = tmp_path_factory.mktemp("hub")
    files = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir() if p.is_file()}
    commits = hub_server.git_repo(
        root / "models" / "org" / "tiny",
        [
            ("checkpoint tag:v1.0", files),
            ("readme", {"README.md": b"# tiny\n"}),
            ("notes branch:dev", {"notes.txt": b"dev only\n"}),
        ],
    )
    commits["main"] = commits["readme"]
    ir = {"openvino_model.xml": b"<net/>", "openvino_model.bin": bytes(64), "model.safetensors": None}
    for name, extra in (
        ("gated", {}),
        ("private", {}),
        ("cut", {}),
        ("pickled", {"pytorch_model.bin": b"pickle"}),
        ("ir-draft", ir),  # an OpenVINO IR repo (FastDraft style); the IR files are stand-ins, fetch does not read them
    ):
        files_here = {k: v for k, v in {**files, **extra}.items() if v is not None}
        hub_server.git_repo(root / "models" / "org" / name, [("checkpoint", files_here)])
    card = b"---\nconfigs:\n- config_name: tiny-raw-v1\n  data_files:\n  - split: test\n    path: tiny-raw-v1/test.jsonl\n---\n"
    rows = [json.dumps({"text": t}).encode() + b"\n" for t in (" = Valkyria = \n", " The game began in 2010 .\n", "")]
    commits["dataset v1"] = hub_server.git_repo(
        root / "datasets" / "org" / "wikitext-tiny",
        [
            ("rows tag:v1", {"README.md": card, "tiny-raw-v1/test.jsonl": b"".join(rows[:2])}),
            ("one more row", {"tiny-raw-v1/test.jsonl": b"".join(rows)}),
        ],
    )["v1"]
    sentences = [json.dumps({"text": s.strip() + "."}).encode() + b"\n" for s in EVAL_TEXT.split(".") if s.strip()]
    eval_card = b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n    path: test.jsonl\n---\n"
    commits["eval v1"] = hub_server.git_repo(
        root / "datasets" / "org" / "eval-text",
        [("sentences tag:v1", {"README.md": eval_card, "test.jsonl": b"".join(sentences)})],
    )["v1"]
    captions = [{"caption": "a red circle", "question": "What colour is the circle?", "id": 0}]
    captions += [{"caption": "", "question": "How many shapes?", "id": 1}]
    captions += [{"caption": f"{n} blue squares", "question": "Is it square?", "id": n} for n in range(2, 6)]
    commits["captions v1"] = hub_server.git_repo(
        root / "datasets" / "org" / "captions",
        [("captions tag:v1", {"test.jsonl": b"".join(json.dumps(c).encode() + b"\n" for c in captions)})],
    )["v1"]
    commits["speech v1"] = hub_server.git_repo(
        root / "datasets" / "org" / "speech-tiny", [("utterances tag:v1", {"test.parquet": speech_parquet()})]
    )["v1"]
    access = {f"models/org/{kind}": {"kind": kind, "token": HUB_TOKEN} for kind in ("gated", "private")}
    (root / "hub-server.json").write_text(json.dumps({"access": access}))
    proc, url = hub_server.start(root)
    try:
        yield SimpleNamespace(url=url, root=root, commits=commits)
    finally:
        hub_server.stop(proc)


# An S3 server (moto) for the DVC remote tests. The keys are fake: moto accepts any. NO_PROXY keeps the
# 127.0.0.1 endpoint off any proxy; AWS_PROFILE / AWS_SESSION_TOKEN from the caller would override the keys.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_PROFILE": None,
    "AWS_SESSION_TOKEN": None,
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
S3_BUCKET = "ov-build-remote"
# moto's server (a Flask app) in its own process on 127.0.0.1; it exits by itself when its parent is gone.
_S3_SERVER = """
import os, sys, time
from moto.server import ThreadedMotoServer
parent = os.getppid()
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
while os.getppid() == parent:
    time.sleep(1)
"""


def with_env(extra: dict) -> dict:
    """os.environ with `extra` applied; entries set to None are removed."""
    return {k: v for k, v in {**os.environ, **extra}.items() if v is not None}


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server: moto's, as a subprocess bound to 127.0.0.1 on a free port, with the bucket
    S3_BUCKET. Yields a namespace with `url` (the endpoint), `bucket`, `env` (S3_ENV: fake keys, NO_PROXY; None
    = unset) and `client` (a boto3 S3 client on it); stopped at the end of the session."""
    from types import SimpleNamespace

    import boto3
    from botocore.config import Config

    from tests import hub_server

    root = tmp_path_factory.mktemp("s3")
    port = hub_server.free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / "moto-server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _S3_SERVER, str(port)], stdout=log, stderr=log, env=with_env(S3_ENV)
        )
    try:
        client = boto3.client(
            "s3",
            endpoint_url=url,
            region_name=S3_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
            config=Config(proxies={}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30),
        )
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            try:
                client.list_buckets()
                break
            except Exception as e:  # not listening yet: botocore's EndpointConnectionError and kin
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server not answering on {url} after 30 s: {e}") from None
                time.sleep(0.2)
        client.create_bucket(Bucket=S3_BUCKET)
        yield SimpleNamespace(url=url, bucket=S3_BUCKET, env=dict(S3_ENV), client=client)
    finally:
        hub_server.stop(proc)


def speech_parquet() -> bytes:
    """Three tones (22.05 kHz wav bytes) with texts, as a parquet file with the `datasets` Audio feature."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    def wav(i: int) -> bytes:
        buf = io.BytesIO()
        tone = 0.3 * np.sin(np.arange(22050) * 0.05 * (i + 1)).astype(np.float32)
        sf.write(buf, tone, 22050, format="WAV", subtype="PCM_16")
        return buf.getvalue()

    audio = pa.array(
        [{"bytes": wav(i), "path": f"{i}.wav"} for i in range(3)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    features = {"audio": {"_type": "Audio"}, "text": {"dtype": "string", "_type": "Value"}}
    table = pa.table({"audio": audio, "text": [f"tone number {i}" for i in range(3)]})
    table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def hub_env(url: str, hf_home: Path) -> dict:
    """The environment of a stage that talks to the hub at `url`: online, its own empty HF cache."""
    return {
        "HF_ENDPOINT": url,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": None,
        "HF_HUB_OFFLINE": None,
        "HF_DATASETS_OFFLINE": None,
        "HF_TOKEN": None,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


@pytest.fixture
def project(tmp_path, tiny_checkpoint, monkeypatch):
    """The pipeline on the tiny model in a temporary repo; cwd set to it."""
    text = tmp_path / "eval.txt"
    text.write_text(EVAL_TEXT)
    scaffold(tmp_path, tiny_params(tiny_checkpoint, text))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def prepare(root: Path, *stages: str) -> None:
    """The stages every artifact needs before export: params check, data sets, fetch, plan."""
    for args in (
        [("stages.check_params", "--check"), ("stages.evalsets",), ("stages.speechsets",)]
        + [("stages.fetch", "--model", m) for m in yaml.safe_load((root / "params.yaml").read_text())["models"]]
        + [("stages.plan",)]
        + [tuple(s.split()) for s in stages]
    ):
        run_stage(*args, cwd=root)


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny pipeline up to its exports, built once per session (params check, data, fetch, plan, source
    reference, export of every variant); `built` hands each test its own copy."""
    root = tmp_path_factory.mktemp("template") / "project"
    root.mkdir()
    text = root.parent / "eval.txt"
    text.write_text(EVAL_TEXT)
    scaffold(root, tiny_params(tiny_checkpoint, text))
    dvc("repro", "export", "reference", cwd=root)
    return root


@pytest.fixture
def built(tmp_path, tiny_template, monkeypatch) -> Path:
    """A copy of the tiny template (exports done); cwd set to it."""
    root = tmp_path / "project"
    shutil.copytree(tiny_template, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def dvc(*args, cwd, check=True) -> str:
    """Run dvc in a project; returns its stdout (fails the test with the output when it fails)."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"dvc {args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def ran(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    import re

    return set(re.findall(r"Running stage '([^']+)'", output))


def write_params(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(*args, cwd=None, check=True, env=None):
    """Run `python -m stages.<...>` as DVC would; returns the CompletedProcess. `env` entries set to None are
    removed from the environment."""
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=merged)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc) -> str:
    """The one error line a failed stage prints (log lines may precede it); never a traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def assert_nothing_written(root: Path) -> None:
    """No file (and no leftover temp folder) below root."""
    in_git = REPO / "models" / "adapters" / "README.md"  # scaffold copies it: not an output
    leftovers = (
        [p for p in root.rglob("*") if (p.is_file() and p.read_bytes() != in_git.read_bytes()) or ".tmp-" in p.name]
        if root.exists()
        else []
    )
    assert not leftovers, f"half-written output left behind: {leftovers[:5]}"


# Files that take minutes, slowest first (per-file sums of `pytest --durations=0`, 2 workers): with `--dist loadfile
# --no-loadscope-reorder` each xdist worker starts on one of these, so the run ends when the quick files run out
# rather than when a long file is picked up last.
SLOWEST_FILES = [
    "test_world.py",
    "test_default_pipeline_real.py",
    "test_pipeline_e2e.py",
    "test_images.py",
    "test_publish.py",
    "test_faults.py",
    "test_speculative.py",
    "test_determinism.py",
    "test_hub_build.py",
    "test_export.py",
    "test_validate.py",
    "test_eagle3.py",
    "test_image_architectures.py",
    "test_text_embedding.py",
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def perturb_weights(folder, scale: float = 0.15, seed: int = 0, ir: str = "openvino_model") -> None:
    """An export bug after the fact: every large floating-point weight of the IR `ir` gets relative noise."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    core, rng = ov.Core(), np.random.default_rng(seed)
    model = core.read_model(folder / f"{ir}.xml")
    for node in model.get_ordered_ops():
        if (
            node.get_type_name() == "Constant"
            and node.get_element_type() in (ov.Type.f16, ov.Type.f32)
            and node.get_output_size() == 1
            and np.prod(node.get_output_shape(0)) >= 1024
        ):
            data = node.get_data()
            noisy = (data * (1 + scale * rng.standard_normal(data.shape))).astype(data.dtype)
            node.output(0).replace(ops.constant(noisy).output(0))
    staged = folder.parent / f"{folder.name}-perturbed"  # the read model maps the .bin: never write over it
    ov.save_model(model, staged / f"{ir}.xml", compress_to_fp16=False)
    del model
    for name in (f"{ir}.xml", f"{ir}.bin"):
        (staged / name).replace(folder / name)
    staged.rmdir()
