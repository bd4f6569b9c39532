"""Stage pair: check that a draft may serve a main for speculative decoding; write models/pairs/<pair>/pairing.json.

    python -m stages.pair --pair NAME

The tokenizer check (stages.tokenizer_compat) compares vocabularies, merges, special tokens, the rendered chat
template and probe encodings through both the HF tokenizers and the exported OpenVINO tokenizer IRs.
An EAGLE3 draft (its IR carries optimum-intel's `eagle3_mode` flag, which openvino-genai reads) has no tokenizer of its
own: it runs on the main's tokenizer and embedding and reads three of the main's hidden states, so it is checked for
what genai's EAGLE3 path needs instead (the token map output, hidden size, vocabulary, the main's layer count).
A pair expected to be compatible that is not fails the stage with the diff and writes nothing. A pair marked
`expect: incompatible` (a negative control) must be refused: its manifest records the refusal and the diff, and
the stage fails if the check lets it through.
"""

from __future__ import annotations

from pathlib import Path

from stages.core.errors import BuildError, run_stage
from stages.core.io import atomic_dir, read_json, sha256_file, write_json
from stages.core.paths import artifact_dir, pairing_dir
from stages.core.recipe import read_model
from stages.core.runtime import log, setup_logging
from stages.core.schema import Pair
from stages.core.tokenizers import Compatibility, check
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


EAGLE3_MIN_MAIN_LAYERS = 10  # genai taps the main's layers 2, N/2 and N-3 and asserts N >= 10


def is_eagle3(folder: Path) -> bool:
    model = read_model(folder / "openvino_model.xml")
    return model.has_rt_info("eagle3_mode") and model.get_rt_info("eagle3_mode").astype(str).lower() == "true"


def eagle3_check(main: Path, draft: Path) -> Compatibility:
    """What openvino-genai's EAGLE3 decoding needs of a draft head and the main it reads hidden states from."""
    result = Compatibility()
    m = read_json(main / "config.json", "main config")
    d = read_json(draft / "config.json", "EAGLE3 draft config")
    m = m.get("text_config", m)
    outputs = {name for o in read_model(draft / "openvino_model.xml").outputs for name in o.get_names()}
    result.checked.append("eagle3_mode flag in the draft IR")
    result.checked.append("d2t token-map output")
    if not any("d2t" in n for n in outputs):
        result.problems.append(f"draft IR has no d2t output (outputs: {', '.join(sorted(outputs))})")
    result.checked.append("hidden size")
    target_hidden = d.get("target_hidden_size", d.get("hidden_size"))
    if target_hidden != m.get("hidden_size"):
        result.problems.append(
            f"draft reads hidden states of size {target_hidden}; the main's are {m.get('hidden_size')}"
        )
    result.checked.append("vocabulary size")
    if d.get("vocab_size") != m.get("vocab_size"):
        result.problems.append(f"draft vocabulary {d.get('vocab_size')} tokens; the main's {m.get('vocab_size')}")
    if (d.get("draft_vocab_size") or d.get("vocab_size") or 0) > (m.get("vocab_size") or 0):
        result.problems.append(f"draft_vocab_size {d.get('draft_vocab_size')} exceeds the main's vocabulary")
    result.checked.append("main decoder layers")
    layers = m.get("num_hidden_layers", 0)
    if layers < EAGLE3_MIN_MAIN_LAYERS:
        result.problems.append(
            f"main has {layers} decoder layers; openvino-genai's EAGLE3 needs >= {EAGLE3_MIN_MAIN_LAYERS}"
        )
    return result


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
    kind = "eagle3" if is_eagle3(Path(draft["path"])) else "draft"
    if kind == "eagle3":
        log.info("checking EAGLE3 draft %s against %s (main)", pair.draft, pair.main)
        result = eagle3_check(Path(main["path"]), Path(draft["path"]))
        checks = {
            "tokenizer_check": {
                "checked": [],
                "problems": [],
                "note": "EAGLE3: the draft runs on the main's tokenizer",
            },
            "eagle3_check": {"checked": result.checked, "problems": result.problems},
        }
    else:
        log.info("checking tokenizers of %s (main) and %s (draft)", pair.main, pair.draft)
        result = check(Path(main["path"]), Path(draft["path"]))
        checks = {"tokenizer_check": {"checked": result.checked, "problems": result.problems}}
    diff = "\n  ".join(result.problems)
    what = "an EAGLE3 draft for" if kind == "eagle3" else "tokenizer-compatible with"
    if not result.ok and pair.expect == "compatible":
        raise BuildError(f"pairs.{name}: draft {pair.draft} is not {what} {pair.main}:\n  {diff}")
    if result.ok and pair.expect == "incompatible":
        raise BuildError(
            f"pairs.{name}: expected the check to refuse draft {pair.draft} (expect: incompatible), "
            f"but it passed ({', '.join(result.checked)})"
        )
    status = "paired" if result.ok else "refused"
    manifest = {
        "pair": name,
        "status": status,
        "kind": kind,
        "expect": pair.expect,
        "main": main,
        "draft": draft,
        **checks,
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
