"""Stage pair: check that a draft may serve a main for speculative decoding; write models/pairs/<pair>/pairing.json.

    python -m stages.pair --pair NAME

The tokenizer check (stages.tokenizer_compat) compares vocabularies, merges, special tokens, the rendered chat
template and probe encodings through both the HF tokenizers and the exported OpenVINO tokenizer IRs.
A pair expected to be compatible that is not fails the stage with the diff and writes nothing. A pair marked
`expect: incompatible` (a negative control) must be refused: its manifest records the refusal and the diff, and
the stage fails if the check lets it through.
"""

from __future__ import annotations

from pathlib import Path

from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir, read_json, sha256_file, write_json
from stages.core.paths import artifact_dir, pairing_dir
from stages.core.runtime import log, setup_logging
from stages.core.schema import Pair
from stages.core.tokenizers import check
from stages.params import Params, load_stage_params, stage_parser


def artifact_summary(params: Params, artifact: str, role: str, device: str) -> dict:
    folder = artifact_dir(artifact)
    manifest = read_json(folder / "manifest.json", f"{role} artifact (run `dvc repro export@{artifact}`)")
    model, variant = artifact.split("/")
    return {
        "model": model,
        "variant": variant,
        "path": folder.as_posix(),
        "device": device,
        "recipe": manifest.get("recipe"),
        "size_bytes": manifest.get("size_bytes"),
        "model_xml_sha256": sha256_file(folder / "openvino_model.xml"),
    }


def devices(params: Params, pair: Pair) -> tuple[str, str]:
    """Main and draft devices: as the pair says, else each artifact's target."""
    main_target = params.variants[pair.main.split("/")[1]].target
    draft_target = params.variants[pair.draft.split("/")[1]].target
    return pair.main_device or main_target, pair.draft_device or draft_target


def pair_artifacts(params: Params, name: str) -> dict:
    pair = params.pairs[name]
    main_device, draft_device = devices(params, pair)
    main = artifact_summary(params, pair.main, "main", main_device)
    draft = artifact_summary(params, pair.draft, "draft", draft_device)
    log.info("checking tokenizers of %s (main) and %s (draft)", pair.main, pair.draft)
    result = check(Path(main["path"]), Path(draft["path"]))
    diff = "\n  ".join(result.problems)
    if not result.ok and pair.expect == "compatible":
        raise BuildError(f"pairs.{name}: draft {pair.draft} is not tokenizer-compatible with {pair.main}:\n  {diff}")
    if result.ok and pair.expect == "incompatible":
        raise BuildError(
            f"pairs.{name}: expected the check to refuse draft {pair.draft} (expect: incompatible), "
            f"but it passed ({', '.join(result.checked)})"
        )
    status = "paired" if result.ok else "refused"
    manifest = {
        "pair": name,
        "status": status,
        "expect": pair.expect,
        "main": main,
        "draft": draft,
        "tokenizer_check": {"checked": result.checked, "problems": result.problems},
    }
    with atomic_dir(pairing_dir(name)) as tmp:
        write_json(tmp / "pairing.json", manifest)
    if result.ok:
        log.info("paired %s: %s + draft %s (%s)", name, pair.main, pair.draft, ", ".join(result.checked))
    else:
        log.info("refused %s as expected (negative control):\n  %s", name, diff)
    return manifest


def main(argv=None) -> None:
    args = stage_parser(__doc__, pair=True).parse_args(argv)
    setup_logging()
    pair_artifacts(load_stage_params(args), args.pair)


if __name__ == "__main__":
    run_stage(main)
