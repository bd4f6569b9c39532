"""Stage evalsets: materialise the eval and calibration text sets and the prompt sets (local files or `datasets`
splits) into data/.

    python -m stages.evalsets

Writes data/eval/<name>.txt, data/calibration/<name>.txt, data/prompts/<name>.jsonl (one JSON string per prompt)
and a manifest.json in each folder (where each set came from: the path as written in params, or the dataset with
its resolved revision, and the content's sha256).
"""

from __future__ import annotations

from stages.core.errors import run_stage
from stages.core.io import atomic_dir, sha256_text, write_json, write_text
from stages.core.paths import DATA
from stages.core.runtime import log, setup_logging
from stages.core.textdata import prompt_entries, slice_text, write_prompt_set
from stages.params import load_stage_params, stage_parser


def build(sets: dict, section: str) -> dict[str, tuple[str, dict]]:
    return {name: slice_text(spec, f"{section}.{name}") for name, spec in sets.items()}


def main(argv=None) -> None:
    args = stage_parser(__doc__).parse_args(argv)
    setup_logging()
    params = load_stage_params(args)
    built = {"eval": build(params.eval_sets, "eval_sets"), "calibration": build(params.calibration, "calibration")}
    prompts = {name: prompt_entries(spec, f"prompt_sets.{name}") for name, spec in params.prompt_sets.items()}
    for folder, sets in built.items():  # every set is read before any is written
        with atomic_dir(DATA / folder) as tmp:
            for name, (text, _) in sets.items():
                write_text(tmp / f"{name}.txt", text)
                log.info("wrote %s/%s.txt (%d chars)", folder, name, len(text))
            write_json(
                tmp / "manifest.json",
                {
                    name: {**where, "chars": len(text), "sha256": sha256_text(text)}
                    for name, (text, where) in sets.items()
                },
            )
    with atomic_dir(DATA / "prompts") as tmp:
        for name, (entries, _) in prompts.items():
            write_prompt_set(tmp / f"{name}.jsonl", entries)
            log.info("wrote prompts/%s.jsonl (%d prompts)", name, len(entries))
        write_json(
            tmp / "manifest.json",
            {
                name: {**where, "prompts": len(entries), "sha256": sha256_text("\n".join(entries))}
                for name, (entries, where) in prompts.items()
            },
        )


if __name__ == "__main__":
    run_stage(main)
