"""One module per model family: how to export it, run it, run its source in PyTorch, and score it. A module
registers its Family subclass with @register; adding a family adds a module (and its params), nothing else."""

from __future__ import annotations

import importlib
import pkgutil

from stages.core.errors import BuildError
from stages.families.base import Family

FAMILIES: dict[str, Family] = {}
NOT_A_FAMILY = {"scorer"}  # models that score others (CLIP, sentence embeddings): fetched, never exported


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: instantiate and register a family (abstract methods must all be implemented)."""
    name = getattr(cls, "name", "")
    if not name or name in NOT_A_FAMILY:
        raise TypeError(f"{cls.__qualname__}: a family needs a `name` other than {sorted(NOT_A_FAMILY)}")
    if name in FAMILIES:
        raise TypeError(
            f"family '{name}' registered twice ({type(FAMILIES[name]).__qualname__} and {cls.__qualname__})"
        )
    FAMILIES[name] = cls()
    return cls


def _discover() -> None:
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "base":
            importlib.import_module(f"{__name__}.{module}")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise BuildError(f"family: unknown family '{name}' (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


_discover()
