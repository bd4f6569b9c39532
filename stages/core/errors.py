"""One error type for bad input, and the one entry wrapper every stage runs through.

A `BuildError` carries a single line naming the key, file, repository or value at fault. `run_stage` prints that
line and exits 1; with OVBUILD_DEBUG=1 it prints the traceback too. Library errors caused by user input become a
BuildError at one boundary (`user_input`), never by catching everything: a bug still shows its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator

DEBUG_ENV = "OVBUILD_DEBUG"


class BuildError(Exception):
    """Bad input or a failed check: one line for the user."""


# Library errors that mean "this input is unreadable / unreachable", not "the code has a bug".
def _input_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [
        OSError,
        ValueError,
        EOFError,
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        IndexError,
        TypeError,
    ]
    for module, names in (
        ("safetensors", ("SafetensorError",)),
        ("yaml", ("YAMLError",)),
        ("PIL", ("UnidentifiedImageError",)),
        ("soundfile", ("LibsndfileError",)),
        ("huggingface_hub.errors", ("HfHubHTTPError", "LocalEntryNotFoundError", "OfflineModeIsEnabled")),
        ("requests", ("RequestException",)),
        ("httpx", ("HTTPError",)),
    ):
        mod = sys.modules.get(module)
        for name in names:
            if mod is not None and isinstance(getattr(mod, name, None), type):
                types.append(getattr(mod, name))
    return tuple(types)


@contextlib.contextmanager
def user_input(what: str) -> Iterator[None]:
    """Turn a library's error while reading `what` (e.g. "models.x.source.path: /a/b.gguf") into one line."""
    try:
        yield
    except BuildError:
        raise
    except _input_error_types() as e:
        raise BuildError(f"{what}: {describe(e)}") from e


def describe(e: BaseException) -> str:
    """A library exception as one short line (first line of its message, with its type when that helps)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    kind = type(e).__name__
    if not text:
        return kind
    return text if kind in ("BuildError", "ValueError", "OSError") else f"{text} ({kind})"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


def run_stage(main: Callable[[list[str] | None], int | None], name: str = "") -> None:
    """Run a stage's main(): a BuildError prints one line ("error: ...") and exits 1; Ctrl-C exits 130. The stage's
    wall time is appended to the build's timing log (read by the report)."""
    start = time.time()
    code = 0
    try:
        code = main(None) or 0
    except BuildError as e:
        if debug_enabled():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        code = 130
    finally:
        _log_timing(name or stage_label(), time.time() - start, code)
    sys.exit(code)


def stage_label() -> str:
    """`stages.<module> <args>` for the running stage (its command line, without the interpreter's path)."""
    module = os.path.splitext(os.path.basename(sys.argv[0]))[0] if sys.argv and sys.argv[0] else "?"
    return " ".join([f"stages.{module}", *sys.argv[1:]])


TIMINGS_ENV = "OVBUILD_TIMINGS"  # where stage wall times go (default .ovbuild/timings.jsonl, outside DVC)


def _log_timing(stage: str, seconds: float, code: int) -> None:
    path = os.environ.get(TIMINGS_ENV, os.path.join(".ovbuild", "timings.jsonl"))
    if not path:
        return
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "stage": stage,
                        "seconds": round(seconds, 2),
                        "exit": code,
                        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }
                )
                + "\n"
            )
