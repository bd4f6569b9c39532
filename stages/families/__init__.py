"""One place per model family: how to export it, run it on a device, and score it. Each module here defines a
Family subclass; adding a family adds a module (and its params / dvc.yaml entries), nothing else."""
from __future__ import annotations

import importlib
import pkgutil

from stages.families.base import Family


def _discover() -> dict[str, Family]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found = [cls() for cls in Family.__subclasses__() if cls.name]
    return {f.name: f for f in sorted(found, key=lambda f: f.name)}


FAMILIES: dict[str, Family] = _discover()


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise SystemExit(f"family: unknown family '{name}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]
