"""Property-based: random mutations of the shipped params.yaml (a key deleted, renamed or given twice, a value of
another type or out of range, a name pointing at nothing) either load, with the mutation visible in the loaded
params, or fail with a BuildError whose one line names the key or value: never another exception, never a silent
change of meaning. Derandomized and bounded: the same examples on every run."""

import copy
import math
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.check_params import load_checked
from stages.core.errors import BuildError
from tests.conftest import REPO

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())
OTHER_VALUES = [None, "text", 7, -1, 0, 2.5, True, [], {}, ["x"], {"k": 1}]
OUT_OF_RANGE = [-1, 0, -0.5, 1e12, -1e12, 2**40, math.inf, -math.inf]
DANGLING = "nosuch"
SETTINGS = settings(
    derandomize=True,
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

pytestmark = pytest.mark.fast  # the edit-loop tier (make test-fast): no real weights, no dvc repro, no export


def paths(node, prefix=()) -> list[tuple]:
    """Every key / index path below node (containers and leaves)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for key, value in items:
        found.append((*prefix, key))
        found += paths(value, (*prefix, key))
    return found


def get(node, path):
    for key in path:
        node = node[key]
    return node


ALL_PATHS = paths(SHIPPED)
NUMBER_PATHS = [p for p in ALL_PATHS if type(get(SHIPPED, p)) in (int, float)]
STRING_PATHS = [p for p in ALL_PATHS if isinstance(get(SHIPPED, p), str)]
KEY_PATHS = [p for p in ALL_PATHS if isinstance(p[-1], str)]


def mutate(params: dict, kind: str, path: tuple, value) -> tuple[dict, tuple | None, object]:
    """The mutated params, the path the mutated value now lives at (None: deleted) and that value."""
    params = copy.deepcopy(params)
    parent = get(params, path[:-1])
    if kind == "delete":
        del parent[path[-1]]
        return params, None, None
    if kind == "rename":
        renamed = f"{path[-1]}_renamed"
        parent[renamed] = parent.pop(path[-1])
        return params, (*path[:-1], renamed), parent[renamed]
    parent[path[-1]] = value
    return params, path, value


mutations = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(ALL_PATHS), st.none()),
    st.tuples(st.just("rename"), st.sampled_from(KEY_PATHS), st.none()),
    st.tuples(st.just("retype"), st.sampled_from(ALL_PATHS), st.sampled_from(OTHER_VALUES)),
    st.tuples(st.just("range"), st.sampled_from(NUMBER_PATHS), st.sampled_from(OUT_OF_RANGE)),
    st.tuples(st.just("dangling"), st.sampled_from(STRING_PATHS), st.just(DANGLING)),
)


def loaded_value(params, path: tuple):
    """The value at `path` of the loaded params, as plain data (the YAML's own keys and aliases)."""
    node = params.model_dump(by_alias=True, mode="python")
    for key in path:
        node = node[key] if isinstance(node, dict) else node[key] if isinstance(node, list) else getattr(node, key)
    return node


def same(given_value, loaded) -> bool:
    """Loaded as given: equal (a mapping: every given key, defaults aside), not a bool read as a number."""
    if isinstance(given_value, dict):
        return isinstance(loaded, dict) and all(k in loaded and same(v, loaded[k]) for k, v in given_value.items())
    if isinstance(given_value, list):
        return isinstance(loaded, list) and len(loaded) == len(given_value) and all(map(same, given_value, loaded))
    if isinstance(given_value, bool) != isinstance(loaded, bool):
        return False
    if isinstance(given_value, float) and math.isnan(given_value):
        return isinstance(loaded, float) and math.isnan(loaded)
    return given_value == loaded


def names_the_fault(message: str, path: tuple, value) -> bool:
    """The error's line names a key of the mutated path or the value (a dangling name, a deleted entry)."""
    words = {str(k) for k in path if isinstance(k, str)} | {str(value)}
    if isinstance(value, str):
        words |= set(value.split("/"))
    return any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w])", message) for w in words if w)


def names_a_key(message: str, params: dict) -> bool:
    """The error names a key path of the params it refused (e.g. a rule the mutation left matching nothing)."""
    found = re.match(r"^\S+: ([\w\-]+)(?:\.[\w\-@*]+)*:", message)
    return bool(found) and found.group(1) in params


def write(tmp_path, params: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def load_or_error(path):
    try:
        return load_checked(path), None
    except BuildError as e:
        return None, str(e)


@SETTINGS
@given(mutation=mutations)
def test_mutated_params_load_as_written_or_fail_naming_the_key(tmp_path, mutation):
    kind, path, value = mutation
    original = get(SHIPPED, path)
    params, where, new = mutate(SHIPPED, kind, path, value)
    loaded, error = load_or_error(write(tmp_path, params))  # any other exception fails the test
    if error is not None:
        first = error.splitlines()[0]
        assert all(line.startswith(str(tmp_path)) for line in error.splitlines()), error
        named = (*path, *(where or ()))  # a renamed key may be named by its old or its new name
        assert names_the_fault(first, named, new if kind != "delete" else original) or names_a_key(first, params), (
            kind,
            path,
            value,
            error,
        )
    elif where is not None:
        assert same(new, loaded_value(loaded, where)), (kind, path, value)


DUPLICABLE = [
    i
    for i, line in enumerate(yaml.safe_dump(SHIPPED, sort_keys=False).splitlines())
    if re.match(r"^\s*[\w.\-]+:", line)
]


@SETTINGS
@given(line=st.sampled_from(DUPLICABLE))
def test_a_key_given_twice_is_refused_naming_key_and_line(tmp_path, line):
    lines = yaml.safe_dump(SHIPPED, sort_keys=False).splitlines()
    key = lines[line].split(":")[0].strip()
    lines.insert(line, lines[line].split(":")[0] + ": null")  # before it: the original's block stays its own
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    loaded, error = load_or_error(path)
    assert loaded is None, f"line {line + 1}: duplicate '{key}' accepted"
    assert error == f"{path}:{line + 2}: not valid YAML: duplicate key '{key}' (first at line {line + 1})"
