"""Recipe checks around export: before (checkpoint shapes vs group size) and after (what NNCF recorded in the IR)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from stages.params import Variant

EMBEDDING_MARKERS = ("embed", "lm_head", "wte", "wpe", "shared.weight")


class RecipeError(SystemExit):
    pass


def checkpoint_weight_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in sorted(Path(checkpoint).rglob("*.safetensors")):
        with safe_open(f, framework="np") as st:
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
        raise RecipeError(
            f"variants.{variant_name}.group_size: {gs} does not divide the {channels} input channels of {name} "
            f"({len(bad)} layer(s) affected); choose a divisor or set group_size_fallback: adjust|ignore")


def _rt_value(node):
    return node.astype(str) if hasattr(node, "astype") else str(node)


def read_compression_info(model_xml: Path) -> dict:
    """NNCF's `nncf/weight_compression/*` rt_info of an IR, as plain strings ({} when uncompressed)."""
    import openvino as ov

    model = ov.Core().read_model(model_xml)
    if not model.has_rt_info(["nncf", "weight_compression"]):
        return {}
    section = model.get_rt_info(["nncf", "weight_compression"])
    return {k: _rt_value(v) for k, v in section.astype(dict).items()}


def weight_counts(model_xml: Path) -> Counter:
    """Weight elements per element type (u4, i8, f16, ...), counted over the IR's large constants."""
    import openvino as ov

    model = ov.Core().read_model(model_xml)
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


def check_ir(model_xml: Path, variant: Variant, variant_name: str, bitwidths: dict[str, float]) -> dict:
    info = read_compression_info(model_xml)
    problems = []
    mode = expected_mode(variant)
    if mode is None:
        if info:
            problems.append(f"fp16 requested but NNCF compression recorded: {info.get('mode')}")
        if not any(t == "f16" for t in bitwidths):
            problems.append(f"fp16 requested but no f16 weights found ({bitwidths})")
    else:
        if not info:
            problems.append("no nncf/weight_compression rt_info: the IR was not compressed")
        else:
            if info.get("mode") != mode:
                problems.append(f"mode {info.get('mode')} != requested {mode}")
            want_gs = -1 if variant.weight_format == "int8" else variant.group_size
            if variant.weight_format == "int4" and str(info.get("group_size")) != str(want_gs):
                problems.append(f"group_size {info.get('group_size')} != requested {want_gs}")
            want_ratio = 1.0 if variant.weight_format == "int8" or variant.ratio is None else variant.ratio
            if "ratio" in info and abs(float(info["ratio"]) - want_ratio) > 1e-6:
                problems.append(f"ratio {info['ratio']} != requested {want_ratio}")
            for key, want in (("awq", variant.awq), ("scale_estimation", variant.scale_estimation),
                              ("all_layers", variant.all_layers), ("backup_mode", variant.backup_precision)):
                if want is not None and key in info and str(info[key]) != str(want):
                    problems.append(f"{key} {info[key]} != requested {want}")
            low_bit = {"u4", "i4"} if variant.weight_format == "int4" else {"u8", "i8"}
            if not any(t in low_bit for t in bitwidths):
                problems.append(f"no {'/'.join(sorted(low_bit))} weights in the IR ({bitwidths})")
    if problems:
        raise RecipeError(f"{model_xml}: artifact does not match variants.{variant_name}: " + "; ".join(problems))
    return info
