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

from stages.common import MODELS, artifact_dir, atomic_dir, log, read_json, setup_logging, sha256_file, write_json
from stages.params import Pair, Params, load_stage_params, stage_parser
from stages.tokenizer_compat import check


class PairError(SystemExit):
    pass


def pairing_dir(pair: str) -> Path:
    return MODELS / "pairs" / pair


def artifact_summary(params: Params, pair: Pair, role: str, device: str) -> dict:
    model, variant = pair.artifact(role)
    folder = artifact_dir(model, variant)
    if not (folder / "manifest.json").is_file():
        raise PairError(f"pairs: {role} artifact {folder} is not built; run `dvc repro` for it first")
    manifest = read_json(folder / "manifest.json")
    return {"model": model, "variant": variant, "path": folder.as_posix(), "device": device,
            "recipe": manifest.get("recipe"), "size_bytes": manifest.get("size_bytes"),
            "model_xml_sha256": sha256_file(folder / "openvino_model.xml")}


def devices(params: Params, pair: Pair) -> tuple[str, str]:
    """Main and draft devices: as the pair says, else each artifact's target."""
    main_target = params.variants[pair.artifact("main")[1]].target
    draft_target = params.variants[pair.artifact("draft")[1]].target
    return pair.main_device or main_target, pair.draft_device or draft_target


def pair_artifacts(params: Params, name: str) -> dict:
    pair = params.pairs[name]
    main_device, draft_device = devices(params, pair)
    main = artifact_summary(params, pair, "main", main_device)
    draft = artifact_summary(params, pair, "draft", draft_device)
    log.info("checking tokenizers of %s (main) and %s (draft)", pair.main, pair.draft)
    result = check(Path(main["path"]), Path(draft["path"]))
    diff = "\n  ".join(result.problems)
    if not result.ok and pair.expect == "compatible":
        raise PairError(f"pairs.{name}: draft {pair.draft} is not tokenizer-compatible with {pair.main}:\n  {diff}")
    if result.ok and pair.expect == "incompatible":
        raise PairError(f"pairs.{name}: expected the check to refuse draft {pair.draft} (expect: incompatible), "
                        f"but it passed ({', '.join(result.checked)})")
    status = "paired" if result.ok else "refused"
    manifest = {"pair": name, "status": status, "expect": pair.expect, "main": main, "draft": draft,
                "tokenizer_check": {"checked": result.checked, "problems": result.problems}}
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
    main()
