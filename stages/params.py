"""The params.yaml schema: the shared sections (stages/core/schema.py), checked by every stage without importing any
family, so the stages that prepare data and checkpoints do not depend on family code. Each family's own `Settings`
(validate.<family>) and the checks that need the families live in stages/check_params.py.
"""

from __future__ import annotations

import argparse
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, model_validator

from stages.core.errors import BuildError
from stages.core.io import read_yaml
from stages.core.paths import DATA, split_artifact
from stages.core.schema import (
    ARTIFACT_PATTERN,
    NAME_PATTERN,
    SOURCE_TYPES,
    Adapter,
    AdapterTraining,
    DerivedDraft,
    GateSettings,
    LocalSource,
    ModelSpec,
    Pair,
    PromptLookup,
    PromptSource,
    RegressionSettings,
    SpeculativeValidation,
    SpeechSet,
    Strict,
    TextSource,
    ValidateCommon,
    Variant,
)

NOT_A_FAMILY = {"scorer"}  # models that score others (CLIP, sentence embeddings): fetched, never exported
SPECULATIVE = "speculative"  # rules on draft/main pairs and prompt lookup
SPECULATIVE_METRICS = ("output_match", "acceptance_rate", "draft_share", "tokens_per_step")
SOURCE = "source"
CPU_PATH = "cpu-path"  # an NPU target's artifact through the CPU plugin (see stages.core.devices)
CHECKED_PATH = DATA / "params.checked"  # the params stage's output: constant, so it only orders the pipeline


class ValidateSettings(ValidateCommon):
    """validate: the shared settings, `speculative`, and one section per built family (checked by the family's own
    Settings when families are loaded)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    speculative: SpeculativeValidation | None = None


class Params(Strict):
    models: dict[str, ModelSpec] = Field(min_length=1)
    variants: dict[str, Variant]
    build: list[str] = Field(min_length=1)  # main artifacts, `<model>/<variant>`
    eval_sets: dict[str, TextSource] = {}
    calibration: dict[str, TextSource] = {}
    speech_sets: dict[str, SpeechSet] = {}
    prompt_sets: dict[str, PromptSource] = {}  # named prompt lists (files or `datasets` columns)
    adapters: dict[str, Adapter]  # may be empty: dvc.yaml iterates over it
    derived_drafts: dict[str, DerivedDraft]  # may be empty: dvc.yaml iterates over it
    drafts: list[str]  # draft artifacts, `<model>/<variant>` (may be empty)
    pairs: dict[str, Pair]  # may be empty
    prompt_lookup: dict[str, PromptLookup]  # may be empty
    validate_: ValidateSettings = Field(alias="validate")
    gate: GateSettings
    regression: RegressionSettings = RegressionSettings()

    @model_validator(mode="after")
    def _checked(self) -> Params:
        for check in (
            self._check_names,
            self._check_build,
            self._check_sets,
            self._check_drafts,
            self._check_pairs,
            self._check_adapters,
            self._check_rule_names,
        ):
            check()
        return self

    # ---------------------------------------------------------------- checks (each raises "key: message")
    def _check_names(self) -> None:
        """dvc.yaml tracks `models.<name>`, `variants.<name>`, ...: DVC would read a dot in a name as nesting."""
        for section in (
            "models",
            "variants",
            "adapters",
            "pairs",
            "prompt_lookup",
            "derived_drafts",
            "eval_sets",
            "calibration",
            "speech_sets",
            "prompt_sets",
        ):
            for name in getattr(self, section):
                if not re.fullmatch(NAME_PATTERN, name):
                    raise ValueError(
                        f"{section}.{name}: names may use letters, digits, '-' and '_' only "
                        "(DVC reads a '.' in a params key as nesting)"
                    )
        for reserved, holds in (("pairs", "the pairing manifests"), ("adapters", "the LoRA adapters")):
            if reserved in self.models or reserved in self.derived_drafts:
                raise ValueError(f"models.{reserved}: '{reserved}' is reserved (models/{reserved} holds {holds})")
        for name in self.derived_drafts:
            if name in self.models:
                raise ValueError(f"derived_drafts.{name}: the name is already used in models")
        for name in self.prompt_lookup:
            if name in self.pairs:
                raise ValueError(f"prompt_lookup.{name}: the name is already used in pairs")

    def _check_build(self) -> None:
        for key, artifacts in (("build", self.build), ("drafts", self.drafts)):
            seen = set()
            for i, name in enumerate(artifacts):
                if not re.fullmatch(ARTIFACT_PATTERN, name):
                    raise ValueError(f"{key}.{i}: expected '<model>/<variant>', got '{name}'")
                if name in seen:
                    raise ValueError(f"{key}.{i}: '{name}' is listed twice")
                seen.add(name)
                model, variant = split_artifact(name)
                spec = self.spec(model)
                if spec is None:
                    raise ValueError(f"{key}.{i}: unknown model '{model}' in '{name}'")
                if spec.family in NOT_A_FAMILY:
                    raise ValueError(
                        f"{key}.{i}: model '{model}' is a {spec.family}: it scores others and is not exported"
                    )
                if variant not in self.variants:
                    raise ValueError(f"{key}.{i}: unknown variant '{variant}' in '{name}'")
                if key == "drafts" and spec.family != "llm":
                    raise ValueError(f"drafts.{i}: '{model}' is not an llm (drafts serve LLM mains)")
        if overlap := set(self.build) & set(self.drafts):
            raise ValueError(f"drafts: {sorted(overlap)[0]} is in build too (an artifact is a main or a draft)")
        for family in self.built_families():
            if family not in (self.validate_.model_extra or {}):
                raise ValueError(f"validate.{family}: required when build has a {family} model")

    def _check_sets(self) -> None:
        for name, v in self.variants.items():
            if v.dataset and v.dataset not in self.calibration:
                raise ValueError(f"variants.{name}.dataset: unknown calibration set '{v.dataset}'")

    def _check_drafts(self) -> None:
        for name, d in self.derived_drafts.items():
            for key in ("base", "teacher"):
                model = getattr(d, key)
                if model not in self.models or self.models[model].family != "llm":
                    raise ValueError(f"derived_drafts.{name}.{key}: '{model}' is not an llm in models")
            if d.distill and d.distill.data not in self.calibration:
                raise ValueError(f"derived_drafts.{name}.distill.data: unknown calibration set '{d.distill.data}'")

    def _check_pairs(self) -> None:
        if (self.pairs or self.prompt_lookup) and self.validate_.speculative is None:
            raise ValueError("validate.speculative: required when pairs or prompt_lookup are defined")
        entries = [("pairs", n, p) for n, p in self.pairs.items()] + [
            ("prompt_lookup", n, p) for n, p in self.prompt_lookup.items()
        ]
        for section, name, entry in entries:
            if entry.main not in self.build or self.family_of(entry.main) != "llm":
                raise ValueError(f"{section}.{name}.main: '{entry.main}' is not an llm artifact in build")
            if section == "pairs" and entry.draft not in self.drafts:
                raise ValueError(f"pairs.{name}.draft: '{entry.draft}' is not in drafts")
            if entry.prompts and entry.prompts not in self.prompt_sets:
                raise ValueError(f"{section}.{name}.prompts: unknown prompt set '{entry.prompts}' (prompt_sets)")

    def _check_adapters(self) -> None:
        for name, a in self.adapters.items():
            spec = self.spec(a.model)
            if spec is None or spec.family in NOT_A_FAMILY:
                raise ValueError(f"adapters.{name}.model: '{a.model}' is not a model in models")
            if isinstance(a.source, AdapterTraining):
                if spec.family != "llm":
                    raise ValueError(f"adapters.{name}.source: training is implemented for llm models only")
                if a.source.data not in self.calibration:
                    raise ValueError(f"adapters.{name}.source.data: unknown calibration set '{a.source.data}'")

    def _check_rule_names(self) -> None:
        """Every name a rule refers to exists (metric names need the families: see check_families)."""
        built = self.built_families()
        for i, rule in enumerate(self.gate.rules):
            key = f"gate.rules.{i}"
            if rule.family == SPECULATIVE:
                for name in rule.pairs or []:
                    if name not in self.pairs and name not in self.prompt_lookup:
                        raise ValueError(f"{key}.pairs: unknown pair '{name}'")
                if not self.pairs and not self.prompt_lookup:
                    raise ValueError(f"{key}: a speculative rule, but no pairs or prompt_lookup are defined")
                if not any(fnmatchcase(m, rule.metric) for m in SPECULATIVE_METRICS):
                    raise ValueError(
                        f"{key}.metric: '{rule.metric}' matches no pair metric "
                        f"({', '.join(SPECULATIVE_METRICS)}; speed is reported, not gated)"
                    )
                continue
            if rule.family is not None and rule.family not in built:
                raise ValueError(f"{key}.family: build has no {rule.family} model (built: {', '.join(built)})")
            families = [rule.family] if rule.family else built
            variants = {v for f in families for v in self.variants_of(f)}
            for v in rule.variants or []:
                if v not in variants:
                    raise ValueError(f"{key}.variants: '{v}' is not a built variant of {'/'.join(families)}")
            if rule.against not in (None, SOURCE, CPU_PATH) and rule.against not in variants:
                raise ValueError(
                    f"{key}.against: '{rule.against}' is neither 'source', '{CPU_PATH}' (an NPU target's "
                    "own CPU path) nor a built variant"
                )

    # ---------------------------------------------------------------- lookups
    def spec(self, name: str) -> ModelSpec | None:
        """The model entry for `name`; a derived draft reads as a local llm checkpoint (built by derive-draft)."""
        if name in self.models:
            return self.models[name]
        if name in self.derived_drafts:
            d = self.derived_drafts[name]
            return ModelSpec(
                family="llm",
                source=LocalSource(type="local", path=f"models/{name}/checkpoint"),
                license=self.models[d.base].license if d.base in self.models else None,
                note=d.note,
            )
        return None

    def family_of(self, artifact_or_model: str) -> str:
        return self.spec(split_artifact(artifact_or_model)[0]).family

    def built_families(self) -> list[str]:
        return sorted({self.family_of(a) for a in self.build if self.spec(split_artifact(a)[0])})

    def artifacts_of(self, family: str) -> list[str]:
        return [a for a in self.build if self.family_of(a) == family]

    def models_of(self, family: str) -> list[str]:
        return list(dict.fromkeys(split_artifact(a)[0] for a in self.artifacts_of(family)))

    def variants_of(self, family: str) -> list[str]:
        return list(dict.fromkeys(split_artifact(a)[1] for a in self.artifacts_of(family)))

    def raw_settings(self, family: str) -> Any:
        return (self.validate_.model_extra or {}).get(family)

    def adapters_for(self, model: str) -> dict[str, Adapter]:
        return {name: a for name, a in self.adapters.items() if a.model == model}

    def speculative_entries(self) -> dict:
        """Pairs and prompt-lookup entries by name (the gate and report treat both as pairs)."""
        return {**self.pairs, **self.prompt_lookup}


def user_path(loc: tuple) -> str:
    """A pydantic error location as the user's key path (discriminated-union tags dropped)."""
    parts = [str(p) for p in loc if not str(p).startswith(("function-", "tagged-union"))]
    return ".".join(
        p
        for i, p in enumerate(parts)
        if not (
            p in SOURCE_TYPES + ("manifest", "sphinx", "flite")
            and i
            and parts[i - 1] in ("source", "text")
            or i >= 2
            and parts[i - 2] in ("eval_sets", "calibration", "speech_sets", "prompt_sets")
            and p in SOURCE_TYPES + ("manifest", "sphinx", "flite")
        )
    )


def format_errors(err: ValidationError, prefix: str) -> str:
    lines = []
    for e in err.errors():
        loc = user_path(e["loc"])
        if prefix.endswith((".yaml", ".yml")) or "/" in prefix:
            head, loc = prefix, loc
        else:
            head, loc = "", ".".join(p for p in (prefix, loc) if p)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        key = re.match(r"^([\w.\-]+): ", msg)  # validators name a sub-key first: fold it into the path
        if key:
            loc, msg = (
                (loc if loc.endswith(key.group(1)) else ".".join(p for p in (loc, key.group(1)) if p)),
                msg[key.end() :],
            )
        lines.append(f"{head + ': ' if head else ''}{loc + ': ' if loc else ''}{msg}")
    return "\n".join(dict.fromkeys(lines))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    raw = read_yaml(path)
    if raw is not None and not isinstance(raw, dict):
        raise BuildError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        params = Params.model_validate(raw or {})
    except ValidationError as e:
        raise BuildError(format_errors(e, str(path))) from e
    return params


def stage_parser(doc: str, **names: bool | str) -> argparse.ArgumentParser:
    """The parser every stage starts from: --params, plus a --<name> per keyword (artifact, model, pair, draft,
    adapter): required if True, optional if "optional"."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    for name, wanted in names.items():
        if wanted:
            ap.add_argument(f"--{name}", required=wanted is True)
    return ap


def load_stage_params(args: argparse.Namespace) -> Params:
    """Validate params.yaml (the shared sections) and the names given on the command line."""
    params = load_params(args.params)
    known = {
        "model": {**params.models, **params.derived_drafts},
        "pair": params.speculative_entries(),
        "draft": params.derived_drafts,
        "adapter": params.adapters,
        "artifact": params.build + params.drafts,
    }
    for flag, names in known.items():
        name = getattr(args, flag, None)
        if name is not None and name not in names:
            raise BuildError(
                f"--{flag}: '{name}' is not in {args.params} ({flag}s: {', '.join(sorted(names)[:10]) or 'none'})"
            )
    return params
