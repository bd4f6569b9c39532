"""Recipe checks around export: before (checkpoint shapes vs group size) and after (what NNCF recorded in the IR)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from stages.core.errors import BuildError, user_input
from stages.core.schema import Variant

EMBEDDING_MARKERS = ("embed", "lm_head", "wte", "wpe", "shared.weight")


def checkpoint_weight_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in sorted(Path(checkpoint).rglob("*.safetensors")):
        with user_input(f"{f}"), safe_open(f, framework="np") as st:
            for key in st.keys():
                shapes[key] = tuple(st.get_slice(key).get_shape())
    return shapes


def precheck_group_size(checkpoint: Path, variant: Variant, variant_name: str) -> None:
    """Refuse a group size that does not divide the input channels of a layer NNCF would compress to 4 bit."""
    gs = variant.group_size
    if variant.weight_format != "int4" or gs in (None, -1) or variant.group_size_fallback in ("adjust", "ignore"):
        return
    bad = []
    for name, shape in checkpoint_weight_shapes(checkpoint).items():
        if len(shape) != 2 or not name.endswith("weight"):
            continue
        if not variant.all_layers and any(m in name for m in EMBEDDING_MARKERS):
            continue  # kept in backup precision unless all_layers
        if shape[-1] % gs:
            bad.append((name, shape[-1]))
    if bad:
        name, channels = bad[0]
        raise BuildError(
            f"variants.{variant_name}.group_size: {gs} does not divide the {channels} input channels of {name} "
            f"({len(bad)} layer(s) affected); choose a divisor or set group_size_fallback: adjust|ignore"
        )


def read_model(model_xml: Path):
    """An IR as OpenVINO reads it; a missing or corrupt file is one line naming it."""
    import openvino as ov

    if not Path(model_xml).is_file():
        raise BuildError(f"{model_xml}: IR file missing")
    with user_input(f"{model_xml}"):
        try:
            return ov.Core().read_model(model_xml)
        except RuntimeError as e:  # OpenVINO's parse / weights errors
            raise BuildError(f"{model_xml}: not a readable OpenVINO IR ({openvino_reason(e)})") from e


def openvino_reason(e: RuntimeError) -> str:
    """The line of an OpenVINO error that says what is wrong (not where in its C++ sources)."""
    lines = [
        line.strip()
        for line in str(e).splitlines()
        if line.strip() and not line.startswith(("Exception from ", "Check '"))
    ]
    return lines[-1].split(" Please check")[0] if lines else type(e).__name__


def _rt_value(node):
    return node.astype(str) if hasattr(node, "astype") else str(node)


def read_compression_info(model_xml: Path) -> dict:
    """NNCF's `nncf/weight_compression/*` rt_info of an IR, as plain strings ({} when uncompressed)."""
    model = read_model(model_xml)
    if not model.has_rt_info(["nncf", "weight_compression"]):
        return {}
    section = model.get_rt_info(["nncf", "weight_compression"])
    return {k: _rt_value(v) for k, v in section.astype(dict).items()}


def weight_counts(model_xml: Path) -> Counter:
    """Weight elements per element type (u4, i8, f16, ...), counted over the IR's large constants."""
    model = read_model(model_xml)
    counts: Counter = Counter()
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = list(op.get_output_partial_shape(0).to_shape())
        n = 1
        for d in shape:
            n *= d
        if n >= 1024:  # skip scalars and small tables; weights dominate
            counts[op.get_output_element_type(0).get_type_name()] += n
    return counts


def shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in counts.most_common()}


def expected_mode(variant: Variant) -> str | None:
    if variant.weight_format == "fp16":
        return None
    bits = "int8" if variant.weight_format == "int8" else "int4"
    return f"{bits}_{'sym' if variant.sym else 'asym'}"


def postcheck(model_xmls: list[Path], variant: Variant, variant_name: str) -> dict:
    """Fail if any compressed IR does not carry the requested recipe; return what they carry."""
    rt_info, total = {}, Counter()
    for xml in model_xmls:
        counts = weight_counts(xml)
        rt_info[xml.name] = check_ir(xml, variant, variant_name, shares(counts))
        total += counts
    return {"rt_info": rt_info, "weight_bitwidths": shares(total)}


# recipe key -> the rt_info key NNCF records it under (nncf/weight_compression/*)
RT_INFO_KEYS = {
    "ratio": "ratio",
    "awq": "awq",
    "scale_estimation": "scale_estimation",
    "all_layers": "all_layers",
    "backup_precision": "backup_mode",
}


def requested(variant: Variant) -> dict[str, str]:
    """The rt_info entries a compressed IR must carry for this recipe: mode and group size always, every other
    option the params set explicitly."""
    if variant.weight_format == "fp16":
        return {}
    want = {
        "mode": expected_mode(variant),
        "group_size": str(-1 if variant.weight_format == "int8" else variant.group_size),
    }
    for key, rt_key in RT_INFO_KEYS.items():
        if key in variant.model_fields_set and getattr(variant, key) is not None:
            want[rt_key] = str(getattr(variant, key))
    return want


def same(recorded: str, wanted: str) -> bool:
    try:
        return abs(float(recorded) - float(wanted)) < 1e-6
    except ValueError:
        return recorded.strip().lower() == wanted.strip().lower()


def recipe_problems(info: dict, variant: Variant, bitwidths: dict[str, float]) -> list[str]:
    if variant.weight_format == "fp16":
        problems = [f"fp16 requested but NNCF compression recorded: {info.get('mode')}"] if info else []
        if not any(t == "f16" for t in bitwidths):
            problems.append(f"fp16 requested but no f16 weights found ({bitwidths})")
        return problems
    if not info:
        return ["no nncf/weight_compression rt_info: the IR was not compressed"]
    problems = [
        f"{key} not recorded in the IR (requested {want})"
        if key not in info
        else f"{key} {info[key]} != requested {want}"
        for key, want in requested(variant).items()
        if key not in info or not same(str(info[key]), want)
    ]
    low_bit = {"u4", "i4"} if variant.weight_format == "int4" else {"u8", "i8"}
    if not any(t in low_bit for t in bitwidths):
        problems.append(f"no {'/'.join(sorted(low_bit))} weights in the IR ({bitwidths})")
    return problems


def check_ir(model_xml: Path, variant: Variant, variant_name: str, bitwidths: dict[str, float]) -> dict:
    info = read_compression_info(model_xml)
    problems = recipe_problems(info, variant, bitwidths)
    if problems:
        raise BuildError(f"{model_xml}: artifact does not match variants.{variant_name}: " + "; ".join(problems))
    return info
