"""Property tests: every configuration value loads as a valid timeout or as a named problem.

A value reaches ``timeouts.llm.fast`` from a YAML settings file or from the variable
``AUTOBOT_TIMEOUTS__LLM__FAST``. Whatever it is, ``load_config(strict=False)`` must either
accept it as exactly that number of seconds, or leave it out and report a ConfigProblem
that names the key, the value and its source. Any other exception is a defect, and so is
an accepted timeout that differs from the value in the file or variable.

Each value is checked against ``expected_timeout()``, an oracle written here from the
documented rule (a finite number, 0 < x <= 86400, not a bool), not taken from the package.
"""

from __future__ import annotations

import json
import math
import re
import string
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobot_otel import Config, ConfigurationError, _operation, load_config

KEY = "llm.fast"
PROBLEM_KEY = f"timeouts.{KEY}"
VARIABLE = "AUTOBOT_TIMEOUTS__LLM__FAST"
MAX_TIMEOUT = 86_400
KNOWN_ENVIRONMENTS = {"development", "production"}

# The examples reuse one tmp_path and one monkeypatch context per example, which is safe
# because every example overwrites the file and undoes its variables.
PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# Whole-group shapes are fewer and each load is slower, so fewer examples cover them.
GROUP_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=50)


# --------------------------------------------------------------------------- oracle


def expected_timeout(value: object) -> float | None:
    """Return the seconds that ``value`` must load as, or None when it must be rejected."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        # Compared as an int, because float() of a huge int raises OverflowError.
        return float(value) if 0 < value <= MAX_TIMEOUT else None
    if math.isfinite(value) and 0 < value <= MAX_TIMEOUT:
        return value
    return None


def same_value(found: object, expected: object) -> bool:
    """Compare two loaded values, treating NaN as equal to NaN."""
    if isinstance(found, float) and isinstance(expected, float) and math.isnan(expected):
        return math.isnan(found)
    return type(found) is type(expected) and repr(found) == repr(expected)


def problems_for(config: Config, key: str) -> list[Any]:
    return [problem for problem in config.problems if problem.key == key]


def assert_loaded_as(config: Config, value: object, source: str) -> None:
    """Assert that ``value`` was accepted exactly, or rejected with key, value and source."""
    expected = expected_timeout(value)
    found = problems_for(config, PROBLEM_KEY)
    if expected is not None:
        assert found == []
        assert config.timeouts[KEY] == expected
        assert type(config.timeouts[KEY]) is float
        return

    assert KEY not in config.timeouts
    assert len(found) == 1
    (problem,) = found
    assert same_value(problem.value, value), f"{problem.value!r} != {value!r}"
    assert problem.source == source
    assert problem.reason
    with pytest.raises(ConfigurationError) as caught:
        config.raise_for_problems()
    assert PROBLEM_KEY in str(caught.value)
    assert source in str(caught.value)


# --------------------------------------------------------------------------- rendering


def yaml_scalar(value: object) -> str:
    """Write ``value`` as YAML that PyYAML and Dynaconf's YAML 1.2 reader read the same."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        if "." not in mantissa:
            # YAML 1.1 (PyYAML) reads 1e-05 as text; 1.0e-05 is a float in both versions.
            text = f"{mantissa}.0" + (f"e{exponent}" if exponent else "")
        return text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(key)}: {yaml_scalar(item)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no YAML form for {value!r}")


def toml_value(value: object) -> str:
    """Write ``value`` as the TOML text an operator would put in an environment variable."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_parsed(raw: str) -> object:
    """Return what an environment variable holding ``raw`` means, as TOML or as plain text.

    Dynaconf (3.2 and later) reads each variable as the TOML value ``key=<raw>`` and keeps
    the raw text when that is not valid TOML.
    """
    try:
        return tomllib.loads(f"key={raw}")["key"]
    except (tomllib.TOMLDecodeError, KeyError):
        return raw


def write_settings(tmp_path: Path, section: str, value_yaml: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(f"{section}:\n  timeouts:\n    llm:\n      fast: {value_yaml}\n")
    return path


# --------------------------------------------------------------------------- strategies

# Text that YAML can carry in a double-quoted scalar: printable, no surrogates.
printable_text = st.text(st.characters(categories=("L", "N", "P", "S", "Zs")), max_size=12)
numeric_text = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{1,7}(\.[0-9]{0,4})?([eE][+-]?[0-9]{1,3})?\Z"),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-0", "86400", "86400.0001"]),
)
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=5e-324, max_value=float(MAX_TIMEOUT)),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0, 1, MAX_TIMEOUT, MAX_TIMEOUT + 1, -1, 0.0, -0.0, 5e-324]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), printable_text, numeric_text)
# Huge integers (beyond float range) and non-empty mappings are left out here, because
# each has a known defect with a test of its own below.
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.just({}),
)


# --------------------------------------------------------------------------- file values


@PROPERTY_SETTINGS
@given(value=values, section=st.sampled_from(["default", "development"]))
def test_file_value_is_timeout_or_problem(tmp_path: Path, value: object, section: str) -> None:
    """A YAML value is accepted exactly, or rejected naming key, value and file."""
    path = write_settings(tmp_path, section, yaml_scalar(value))
    config = load_config(settings_files=[path], strict=False)
    assert_loaded_as(config, value, f"{path} [{section}]")


@PROPERTY_SETTINGS
@given(text=numeric_text)
def test_unquoted_numeric_file_value(tmp_path: Path, text: str) -> None:
    """An unquoted number in YAML loads as that number, or is rejected naming the file."""
    path = write_settings(tmp_path, "default", text)
    config = load_config(settings_files=[path], strict=False)
    if text in {"nan", "inf", "-inf"}:
        # YAML spells these .nan and .inf; without the dot they are text.
        meaning: object = text
    elif re.fullmatch(r"[+-]?[0-9]+", text):
        meaning = int(text)
    else:
        meaning = float(text)
    assert_loaded_as(config, meaning, f"{path} [default]")


# --------------------------------------------------------------------------- variable values

# TOML has no null, so None is left out of what a variable can hold.
toml_scalars = st.one_of(numbers, st.booleans(), printable_text, numeric_text)
env_raw = st.one_of(
    st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3)).map(toml_value),
    numeric_text,
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12),
).filter(lambda raw: "@" not in raw)  # Dynaconf's @-tokens have their own test below.


@PROPERTY_SETTINGS
@given(raw=env_raw)
def test_variable_value_is_timeout_or_problem(raw: str) -> None:
    """An AUTOBOT_ variable is accepted as the number it contains, or rejected naming it."""
    meaning = toml_parsed(raw)
    # An inline table in the variable is a mapping in place of a timeout: see the
    # dedicated test below.
    if isinstance(meaning, dict) and meaning:
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VARIABLE, raw)
        config = load_config(strict=False)
    assert_loaded_as(config, meaning, VARIABLE)


@pytest.mark.parametrize(
    ("raw", "meaning"),
    [
        ("@int 5", 5),
        ("@float 2.5", 2.5),
        ("@json 3", 3),
        ("@bool 1", True),
        ("@none", None),
        ("@str 3", "3"),
        ("@merge 3", [3]),
    ],
)
def test_dynaconf_token_in_variable(raw: str, meaning: object) -> None:
    """Dynaconf's @-tokens convert first; the converted value is then checked like any other."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VARIABLE, raw)
        config = load_config(strict=False)
    assert_loaded_as(config, meaning, VARIABLE)


@pytest.mark.parametrize("raw", ["@int x", "@json [", "@format {this.missing}"])
def test_broken_token_error_names_variable(raw: str) -> None:
    """A variable whose @-token cannot be converted is named in the ConfigurationError."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VARIABLE, raw)
        with pytest.raises(ConfigurationError) as caught:
            load_config(strict=False)
    assert VARIABLE in str(caught.value)


# --------------------------------------------------------------------------- known defects


HUGE = 10**400  # Beyond the range of a float, so float(HUGE) raises OverflowError.


@pytest.mark.parametrize("number", [HUGE, -HUGE, 2**1024], ids=["10**400", "-10**400", "2**1024"])
def test_huge_integer_in_file(tmp_path: Path, number: int) -> None:
    """An integer beyond float range in a file is rejected as too large, not crashing."""
    path = write_settings(tmp_path, "default", str(number))
    config = load_config(settings_files=[path], strict=False)
    assert_loaded_as(config, number, f"{path} [default]")


def test_huge_integer_in_variable() -> None:
    """An integer beyond float range in a variable is rejected as too large, not crashing."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(VARIABLE, str(HUGE))
        config = load_config(strict=False)
    assert_loaded_as(config, HUGE, VARIABLE)


def test_huge_integer_default_argument() -> None:
    """timed_operation(default=<huge int>) raises ValueError, not OverflowError."""
    with pytest.raises(ValueError) as caught:
        _operation.get_operation("payments.charge", default=HUGE)  # type: ignore[arg-type]
    assert "'payments.charge'" in str(caught.value)


def test_huge_integer_breaker_setting(tmp_path: Path) -> None:
    """A breaker setting beyond float range is a problem naming key, value and file."""
    path = tmp_path / "settings.yaml"
    path.write_text(f"default:\n  circuit_breaker:\n    default:\n      open_duration: {HUGE}\n")
    config = load_config(settings_files=[path], strict=False)
    (problem,) = problems_for(config, "circuit_breaker.default.open_duration")
    assert problem.value == HUGE
    assert problem.source == f"{path} [default]"


def test_mapping_in_place_of_timeout(tmp_path: Path) -> None:
    """A mapping where a packaged timeout belongs is reported with its value and file."""
    path = write_settings(tmp_path, "default", "{seconds: 5}")
    config = load_config(settings_files=[path], strict=False)
    (problem,) = problems_for(config, PROBLEM_KEY)
    assert problem.value == {"seconds": 5}
    assert problem.source == f"{path} [default]"
    assert "llm.fast.seconds" not in config.timeouts


def test_non_utf8_settings_file(tmp_path: Path) -> None:
    """A settings file that is not UTF-8 raises ConfigurationError naming the file."""
    path = tmp_path / "settings.yaml"
    path.write_bytes("default:\n  timeouts:\n    llm:\n      fast: 'é'\n".encode("latin-1"))
    with pytest.raises(ConfigurationError) as caught:
        load_config(settings_files=[path], strict=False)
    assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- whole groups

json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, printable_text),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.text(string.ascii_lowercase, min_size=1, max_size=6), children, max_size=3
        ),
    ),
    max_leaves=8,
)
group_paths = st.sampled_from(
    [
        ("timeouts",),
        ("timeouts", "redis"),
        ("timeouts", "redis", "operations"),
        ("timeouts", "llm"),
        ("timeouts", "payments"),
        ("circuit_breaker",),
        ("circuit_breaker", "default"),
        ("circuit_breaker", "main"),
    ]
)


def nest(path: tuple[str, ...], value: object) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(path):
        tree = {part: tree}
    return tree  # type: ignore[no-any-return]


def assert_config_sound(config: Config, sources: set[str]) -> None:
    """Assert that every accepted timeout is valid and every problem names a known source."""
    for key, seconds in config.timeouts.items():
        assert type(seconds) is float, key
        assert 0 < seconds <= MAX_TIMEOUT, key
    for problem in config.problems:
        assert problem.key.startswith(("timeouts", "circuit_breaker")), problem
        assert problem.source in sources, problem
        assert problem.reason, problem


@GROUP_SETTINGS
@given(path=group_paths, value=json_like)
def test_malformed_group_in_file(tmp_path: Path, path: tuple[str, ...], value: object) -> None:
    """Any value for a whole group loads as a sound config or raises ConfigurationError."""
    if value == {}:
        return  # An empty group changes nothing: layers merge.
    file = tmp_path / "settings.yaml"
    file.write_text(f"default: {yaml_scalar(nest(path, value))}\n")
    try:
        config = load_config(settings_files=[file], strict=False)
    except ConfigurationError as exc:
        assert str(file) in str(exc)
        return
    assert_config_sound(config, {f"{file} [default]", "no layer"})


@GROUP_SETTINGS
@given(
    variable=st.sampled_from(
        [
            "AUTOBOT_TIMEOUTS",
            "AUTOBOT_TIMEOUTS__REDIS",
            "AUTOBOT_TIMEOUTS__LLM",
            "AUTOBOT_CIRCUIT_BREAKER",
        ]
    ),
    value=st.one_of(numbers, st.booleans(), printable_text, st.lists(numbers, max_size=3)),
)
def test_malformed_group_in_variable(variable: str, value: object) -> None:
    """A scalar or list where a group belongs is a problem naming the variable."""
    raw = toml_value(value)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(variable, raw)
        config = load_config(strict=False)
    assert_config_sound(config, {variable, "no layer"})
    group = variable.removeprefix("AUTOBOT_").lower().replace("__", ".")
    assert any(problem.key == group and problem.source == variable for problem in config.problems)


@GROUP_SETTINGS
@given(
    text=st.one_of(
        printable_text, st.sampled_from(["Production", " development ", "DEFAULT", "global", ""])
    ),
    from_variable=st.booleans(),
)
def test_environment_name_known_or_rejected(text: str, from_variable: bool) -> None:
    """An environment name selects a declared section or raises ConfigurationError naming it."""
    normalized = text.strip().lower()
    if from_variable and text == "":
        normalized = "development"  # An empty AUTOBOT_ENV counts as unset.
    with pytest.MonkeyPatch.context() as patch:
        if from_variable:
            patch.setenv("AUTOBOT_ENV", text)
        argument = None if from_variable else text
        if normalized in KNOWN_ENVIRONMENTS:
            assert load_config(argument).environment == normalized
            return
        with pytest.raises(ConfigurationError) as caught:
            load_config(argument)
    message = str(caught.value)
    assert repr(text) in message
    assert ("environment variable AUTOBOT_ENV" if from_variable else "env argument") in message
    assert "known environments: development, production" in message


@PROPERTY_SETTINGS
@given(value=st.one_of(numbers, st.booleans(), printable_text, st.lists(numbers, max_size=2)))
def test_default_argument_is_checked(value: object) -> None:
    """timed_operation(default=...) takes a valid timeout or raises ValueError naming it."""
    expected = expected_timeout(value)
    if expected is None:
        with pytest.raises(ValueError) as caught:
            _operation.get_operation("payments.charge", default=value)  # type: ignore[arg-type]
        assert "'payments.charge'" in str(caught.value)
        assert repr(value) in str(caught.value)
    else:
        operation = _operation.get_operation("payments.charge", default=value)  # type: ignore[arg-type]
        assert operation.timeout == expected


def test_broken_yaml_names_file(tmp_path: Path) -> None:
    """A settings file with a YAML syntax error raises ConfigurationError naming the file."""
    path = tmp_path / "settings.yaml"
    path.write_text("default:\n  timeouts:\n    llm: {fast: 1\n")
    with pytest.raises(ConfigurationError) as caught:
        load_config(settings_files=[path], strict=False)
    assert f"settings file {str(path)!r} is not valid" in str(caught.value)
