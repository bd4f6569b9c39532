"""One place per model family: how to export it, run it on a device, and score it."""
from __future__ import annotations

from stages.families.base import Family
from stages.families.llm import LLMFamily
from stages.families.whisper import WhisperFamily

FAMILIES: dict[str, Family] = {f.name: f for f in (LLMFamily(), WhisperFamily())}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise SystemExit(f"family: unknown family '{name}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]
