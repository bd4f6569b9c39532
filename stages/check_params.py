"""The params checks that need the family modules, and each family's own settings (validate.<family>).

    python -m stages.check_params [FILE]         check a file completely (families, rules, metric names)
    python -m stages.check_params --check        the `params` stage: the same, first in `dvc repro`
    python -m stages.check_params --json-schema  the JSON Schema of the shared sections, for editors

Stages that run a family load params through `load_checked_stage_params`; the stages that only prepare data and
checkpoints use `stages.params` alone and so do not depend on family code.
"""

from __future__ import annotations

import argparse
import json
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import ValidationError

from stages.core.errors import BuildError, run_stage
from stages.core.io import write_text
from stages.core.thresholds import bounds_of, relative
from stages.families import FAMILIES, get_family
from stages.params import CHECKED_PATH, NOT_A_FAMILY, SPECULATIVE, Params, format_errors, load_params, load_stage_params


def family_settings(params: Params, family: str):
    """A family's validate.<family> section, checked by the family's own Settings model (None if absent)."""
    raw = params.raw_settings(family)
    if raw is None:
        return None
    try:
        return get_family(family).Settings.model_validate(raw)
    except ValidationError as e:
        raise BuildError(format_errors(e, f"validate.{family}")) from e


def check_families(params: Params) -> None:
    """Raise BuildError naming the key of the first problem only the families can see."""
    for name, spec in params.models.items():
        if spec.family not in FAMILIES and spec.family not in NOT_A_FAMILY:
            raise BuildError(
                f"models.{name}.family: unknown family '{spec.family}' (known: {', '.join(sorted(FAMILIES))}, scorer)"
            )
    for name in sorted(params.validate_.model_extra or {}):
        if name not in FAMILIES:
            raise BuildError(f"validate.{name}: unknown key (families: {', '.join(sorted(FAMILIES))})")
        if name not in params.built_families():
            raise BuildError(f"validate.{name}: settings for a family that build does not use")
    for family_name in params.built_families():
        check_family_settings(params, family_name)
    for name, a in params.adapters.items():
        if not get_family(params.family_of(a.model)).adapter_families:
            raise BuildError(f"adapters.{name}.model: family '{params.family_of(a.model)}' takes no LoRA adapters")
    for i, rule in enumerate(params.gate.rules):
        if rule.family != SPECULATIVE:
            check_rule_metric(params, rule, f"gate.rules.{i}")


def check_family_settings(params: Params, family_name: str) -> None:
    settings, family = family_settings(params, family_name), get_family(family_name)
    if settings is None:
        raise BuildError(f"validate.{family_name}: missing (build has {family_name} artifacts)")
    if settings.reference not in params.variants_of(family_name):
        raise BuildError(
            f"validate.{family_name}.reference: '{settings.reference}' is not a built variant of "
            f"{family_name} (built: {', '.join(params.variants_of(family_name))})"
        )
    try:
        family.check_params(settings, params, f"validate.{family_name}")
    except ValueError as e:
        raise BuildError(str(e)) from e


def check_rule_metric(params: Params, rule, key: str) -> None:
    """A rule's metric (or pattern) names a metric its families produce; a comparison takes no relative bound."""
    families = [rule.family] if rule.family else params.built_families()
    names = {
        m
        for f in families
        for model in params.models_of(f)
        for m in get_family(f).metric_names(family_settings(params, f), params, model)
    }
    matched = [m for m in names if fnmatchcase(m, rule.metric)]
    if not matched:
        raise BuildError(
            f"{key}.metric: '{rule.metric}' matches no metric of {'/'.join(families)} "
            f"(e.g. {', '.join(sorted(names)[:8])})"
        )
    comparisons = {m for f in families for m in get_family(f).comparison_metrics}
    if relative(bounds_of(rule)) and all(m in comparisons for m in matched):
        raise BuildError(
            f"{key}: '{rule.metric}' already compares with `against`; bound it with max / min, "
            "not a change vs the reference"
        )


def checked(params: Params, path: str | Path) -> Params:
    try:
        check_families(params)
    except BuildError as e:  # one line per problem, each naming the file (as load_params writes them)
        raise BuildError("\n".join(f"{path}: {line}" for line in str(e).splitlines())) from e
    return params


def load_checked(path: str | Path = "params.yaml") -> Params:
    """load_params plus every family check, errors prefixed with the file."""
    return checked(load_params(path), path)


def load_checked_stage_params(args: argparse.Namespace) -> Params:
    """load_stage_params (names on the command line) plus every family check."""
    return checked(load_stage_params(args), args.params)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default="params.yaml")
    ap.add_argument("--check", action="store_true", help=f"the params stage: check, then write {CHECKED_PATH}")
    ap.add_argument("--json-schema", action="store_true", help="print the params JSON Schema")
    args = ap.parse_args(argv)
    if args.json_schema:
        print(json.dumps(Params.model_json_schema(by_alias=True), indent=1))
        return 0
    p = load_checked(args.file)
    if args.check:
        write_text(CHECKED_PATH, "params.yaml passed every check\n")  # constant: downstream re-runs never hinge on it
    print(
        f"ok: {len(p.models)} models, {len(p.variants)} variants, {len(p.build)} artifacts, {len(p.drafts)} drafts, "
        f"{len(p.pairs)} pairs, {len(p.prompt_lookup)} prompt-lookup; families {', '.join(p.built_families())}"
    )
    return 0


if __name__ == "__main__":
    run_stage(main)
