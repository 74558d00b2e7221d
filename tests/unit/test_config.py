"""Configuration layers, validation with sources, operation names and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from autobot_otel import (
    ConfigurationError,
    Timeouts,
    UnknownOperationError,
    configure,
    get_config,
    load_config,
    reload_config,
    timed_operation,
    timeouts,
)
from autobot_otel.cli import main, mask_secret


def settings_file(tmp_path: Path, body: str, name: str = "settings.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_packaged_defaults() -> None:
    """With no files and no variables, the packaged defaults apply in development."""
    assert get_config().environment == "development"
    assert timeouts.get("redis.operations.get") == 1.0
    assert timeouts.get("timeouts.redis.connection.socket_connect") == 2.0
    assert timeouts.get("llm.reasoning") == 300.0
    assert timeouts.get("redis.operations.scan_iter") == 30.0


def test_environment_layers() -> None:
    """production overrides get and set; default keeps scan_iter at 10."""
    assert timeouts.get("redis.operations.get", env="production") == 0.5
    assert timeouts.get("redis.operations.set", env="production") == 0.5
    assert timeouts.get("redis.operations.hgetall", env="production") == 2.0
    assert timeouts.get("redis.operations.scan_iter", env="production") == 10.0


def test_env_var_override_keeps_siblings(monkeypatch: pytest.MonkeyPatch) -> None:
    """One AUTOBOT_ variable changes one key and leaves its siblings alone."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET", "0.25")
    config = configure()
    assert config.timeouts["redis.operations.get"] == 0.25
    assert config.timeouts["redis.operations.set"] == 1.0
    assert (
        config.source_of("timeouts.redis.operations.get")
        == "AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET"
    )
    assert config.source_of("timeouts.redis.operations.set") == "packaged defaults [default]"


def test_env_switcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTOBOT_ENV selects the environment."""
    monkeypatch.setenv("AUTOBOT_ENV", "production")
    assert configure().environment == "production"
    assert timeouts.get("redis.operations.get") == 0.5


def test_settings_file_layers_and_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user file merges over the defaults; its source is named."""
    path = settings_file(
        tmp_path,
        "default:\n  timeouts:\n    redis:\n      operations:\n        hgetall: 3.5\n"
        "production:\n  timeouts:\n    llm:\n      fast: 12\n",
    )
    monkeypatch.setenv("AUTOBOT_SETTINGS_FILES", str(path))
    config = configure()
    assert config.timeouts["redis.operations.hgetall"] == 3.5
    assert config.timeouts["redis.operations.get"] == 1.0
    assert config.source_of("timeouts.redis.operations.hgetall") == f"{path} [default]"
    assert timeouts.get("llm.fast", env="production") == 12.0
    assert timeouts.get("llm.fast") == 30.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("0", "greater than zero"),
        ("-1", "greater than zero"),
        ("abc", "not text"),
        ("nan", "not NaN"),
        ("inf", "must be finite"),
        ("true", "not bool"),
        ("100000", "at most 86400"),
        ("'1.5'", "quoted"),
    ],
)
def test_invalid_env_value_names_key_value_source(
    monkeypatch: pytest.MonkeyPatch, raw: str, reason: str
) -> None:
    """Each kind of bad value is reported with its key, value and variable."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__LLM__FAST", raw)
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    (problem,) = caught.value.problems
    assert problem.key == "timeouts.llm.fast"
    assert problem.source == "AUTOBOT_TIMEOUTS__LLM__FAST"
    assert reason in problem.reason
    assert "timeouts.llm.fast" in str(caught.value)


def test_every_problem_listed_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Problems from files and variables are reported together in one error."""
    path = settings_file(
        tmp_path, "default:\n  timeouts:\n    llm:\n      default: -5\n      fast: 'x'\n"
    )
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET", "0")
    with pytest.raises(ConfigurationError) as caught:
        load_config(settings_files=[path])
    found = {problem.key: problem.source for problem in caught.value.problems}
    assert found == {
        "timeouts.llm.default": f"{path} [default]",
        "timeouts.llm.fast": f"{path} [default]",
        "timeouts.redis.operations.get": "AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET",
    }


def test_invalid_config_keeps_previous(monkeypatch: pytest.MonkeyPatch) -> None:
    """configure() with bad settings raises and the active configuration stays."""
    before = get_config()
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__LLM__FAST", "-1")
    with pytest.raises(ConfigurationError):
        configure()
    assert get_config() is before


def test_group_replaced_by_scalar(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable that replaces a whole group is reported at the group's key."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__OPERATIONS", "5")
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    keys = [problem.key for problem in caught.value.problems]
    assert keys == ["timeouts.redis.operations"]
    assert caught.value.problems[0].source == "AUTOBOT_TIMEOUTS__REDIS__OPERATIONS"


def test_unknown_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt environment is rejected with the known ones listed."""
    monkeypatch.setenv("AUTOBOT_ENV", "prod")
    with pytest.raises(
        ConfigurationError, match=r"unknown environment 'prod'.*development, production"
    ):
        load_config()


def test_environment_declared_by_user_file(tmp_path: Path) -> None:
    """A section in a user file declares a new environment."""
    path = settings_file(tmp_path, "staging:\n  timeouts:\n    llm:\n      fast: 7\n")
    config = load_config("staging", [path])
    assert config.environment == "staging"
    assert config.timeouts["llm.fast"] == 7.0


def test_missing_settings_file(tmp_path: Path) -> None:
    """A settings file that does not exist is an error, not silently skipped."""
    with pytest.raises(ConfigurationError, match=r"nope\.yaml.*was not found"):
        load_config(settings_files=[tmp_path / "nope.yaml"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("default: [unclosed\n", "is not valid"),
        ("- a\n- b\n", "must contain a mapping"),
        ("default: 5\n", "section 'default' must be a mapping"),
    ],
)
def test_malformed_settings_file(tmp_path: Path, body: str, message: str) -> None:
    """Broken YAML and wrong shapes name the file and what is wrong."""
    path = settings_file(tmp_path, body)
    with pytest.raises(ConfigurationError, match=message) as caught:
        load_config(settings_files=[path])
    assert str(path) in str(caught.value)


def test_for_operation_resolution() -> None:
    """Short names, full paths and direct keys resolve to their timeouts."""
    assert timeouts.for_operation("redis.get") == 1.0
    assert timeouts.for_operation("redis.scan_iter") == 30.0
    assert timeouts.for_operation("llamaindex.search.query") == 10.0
    assert timeouts.for_operation("llamaindex.query") == 10.0
    assert timeouts.for_operation("llm.fast") == 30.0
    assert timeouts.for_operation("documents.add_document") == 30.0


def test_ambiguous_short_name(tmp_path: Path) -> None:
    """A leaf that appears in two groups of a system must be written in full."""
    path = settings_file(
        tmp_path, "default:\n  timeouts:\n    llamaindex:\n      other:\n        query: 4\n"
    )
    config = load_config(settings_files=[path])
    with pytest.raises(
        UnknownOperationError, match=r"ambiguous.*llamaindex.other.query.*llamaindex.search.query"
    ):
        config.resolve_operation("llamaindex.query")
    assert config.timeout_for("llamaindex.other.query") == 4.0


def test_group_and_get_errors() -> None:
    """group() returns a group, and get() on a group or a typo names the fix."""
    assert timeouts.group("redis.connection") == {
        "socket_connect": 2.0,
        "socket_timeout": 2.0,
        "health_check": 1.0,
    }
    with pytest.raises(KeyError, match=r"it is a group"):
        timeouts.get("redis.operations")
    with pytest.raises(KeyError, match=r"did you mean 'redis.operations.get'"):
        timeouts.get("redis.operations.gett")


def test_validate_reports_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timeouts.validate() raises one error listing every invalid key."""
    accessor = Timeouts(get_config())
    accessor.validate()
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__LLM__FAST", "inf")
    with pytest.raises(
        ConfigurationError, match=r"timeouts.llm.fast = inf \(from AUTOBOT_TIMEOUTS__LLM__FAST\)"
    ):
        accessor.validate()


def test_reload_applies_and_rejects(tmp_path: Path) -> None:
    """reload_config() applies good settings and keeps the last good ones otherwise."""
    path = settings_file(tmp_path, "default:\n  timeouts:\n    llm:\n      fast: 2\n")
    configure(settings_files=[path])

    @timed_operation("llm.fast")
    async def call() -> None:
        return None

    operation = call.__autobot_operation__  # type: ignore[attr-defined]
    assert operation.timeout == 2.0
    path.write_text("default:\n  timeouts:\n    llm:\n      fast: 3\n")
    assert reload_config() is True
    assert operation.timeout == 3.0
    path.write_text("default:\n  timeouts:\n    llm:\n      fast: -3\n")
    assert reload_config() is False
    assert operation.timeout == 3.0
    assert get_config().timeouts["llm.fast"] == 3.0


def test_breaker_settings_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Breaker settings are validated with the timeouts, with their sources."""
    monkeypatch.setenv("AUTOBOT_CIRCUIT_BREAKER__MAIN__OPEN_DURATION", "-2")
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    (problem,) = caught.value.problems
    assert problem.key == "circuit_breaker.main.open_duration"
    assert problem.source == "AUTOBOT_CIRCUIT_BREAKER__MAIN__OPEN_DURATION"


def test_cli_validate_exit_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """config validate exits 0 when valid and 1 listing every problem otherwise."""
    runner = CliRunner()
    result = runner.invoke(main, ["config", "validate"])
    assert result.exit_code == 0
    assert "is valid" in result.output
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__LLM__FAST", "abc")
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__LLM__DEFAULT", "0")
    result = runner.invoke(main, ["config", "validate", "--env", "production"])
    assert result.exit_code == 1
    assert "2 problem(s)" in result.output
    assert "timeouts.llm.fast = 'abc' (from AUTOBOT_TIMEOUTS__LLM__FAST)" in result.output
    assert "timeouts.llm.default = 0 (from AUTOBOT_TIMEOUTS__LLM__DEFAULT)" in result.output


def test_cli_show_sources() -> None:
    """config show lists each value with where it came from."""
    result = CliRunner().invoke(main, ["config", "show", "--env", "production", "--json"])
    assert result.exit_code == 0
    import json

    rows = {row["key"]: row for row in json.loads(result.output)["settings"]}
    assert rows["timeouts.redis.operations.get"]["value"] == 0.5
    assert rows["timeouts.redis.operations.get"]["source"] == "packaged defaults [production]"
    assert rows["timeouts.redis.operations.hgetall"]["source"] == "packaged defaults [default]"


def test_cli_unknown_env_is_clear() -> None:
    """An unknown --env gives one clear error line and exit code 1."""
    result = CliRunner().invoke(main, ["config", "validate", "--env", "prod"])
    assert result.exit_code == 1
    assert "unknown environment 'prod'" in result.output


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("redis.url", "redis://:hunter2@127.0.0.1:6379/0", "redis://****@127.0.0.1:6379/0"),
        ("redis.password", "hunter2", "****"),
        ("api_token", "abc", "****"),
        ("llm.fast", 3.0, 3.0),
    ],
)
def test_mask_secret(key: str, value: object, shown: object) -> None:
    """Secrets are masked in CLI output; other values are shown as they are."""
    assert mask_secret(key, value) == shown


async def test_sighup_reloads(tmp_path: Path) -> None:
    """SIGHUP reloads the settings files; breaker state survives the reload."""
    import asyncio
    import os
    import signal

    from autobot_otel import get_breaker, watch_config

    path = settings_file(tmp_path, "default:\n  timeouts:\n    llm:\n      fast: 2\n")
    configure(settings_files=[path])
    breaker = get_breaker("main")
    breaker.force_open()
    watcher = watch_config()
    try:
        path.write_text("default:\n  timeouts:\n    llm:\n      fast: 4\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if get_config().timeouts["llm.fast"] == 4.0:
                break
        assert get_config().timeouts["llm.fast"] == 4.0
        assert get_breaker("main") is breaker
        assert breaker.state.value == "open"
    finally:
        watcher.stop()


async def test_file_change_reloads_and_counts(tmp_path: Path, telemetry: object) -> None:
    """A watched file change reloads; an invalid change is rejected and counted."""
    import asyncio

    from autobot_otel import watch_config
    from tests.conftest import Telemetry

    assert isinstance(telemetry, Telemetry)
    path = settings_file(tmp_path, "default:\n  timeouts:\n    llm:\n      fast: 2\n")
    configure(settings_files=[path])
    watcher = watch_config(sighup=False, poll_interval=0.05)
    try:
        path.write_text("default:\n  timeouts:\n    llm:\n      fast: 5\n")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if get_config().timeouts["llm.fast"] == 5.0:
                break
        assert get_config().timeouts["llm.fast"] == 5.0
        path.write_text("default:\n  timeouts:\n    llm:\n      fast: zero\n")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if telemetry.value("autobot.config.reloads", status="invalid") == 1:
                break
        assert telemetry.value("autobot.config.reloads", status="invalid") == 1
        assert telemetry.value("autobot.config.reloads", status="success") == 1
        assert get_config().timeouts["llm.fast"] == 5.0
    finally:
        watcher.stop()


def test_config_info_and_timeout_gauges(telemetry: object) -> None:
    """autobot_config_info and autobot_operation_timeout_seconds are exported."""
    from tests.conftest import Telemetry

    assert isinstance(telemetry, Telemetry)

    @timed_operation("redis.get")
    async def get() -> None:
        return None

    text = telemetry.scrape()
    config = get_config()
    assert (
        f'autobot_config_info{{config_hash="{config.config_hash}",environment="development"}} 1.0'
        in text
    )
    assert (
        'autobot_operation_timeout_seconds{database="redis",operation_type="redis.get"} 1.0' in text
    )


@pytest.mark.parametrize("raw", ["true", "false"])
def test_boolean_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """A boolean is blamed on the variable that set it, though True == 1.0 in Python."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET", raw)
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    (problem,) = caught.value.problems
    assert problem.source == "AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET"


def test_top_level_setting_in_file_rejected(tmp_path: Path) -> None:
    """A file with settings outside any environment section is an error, not ignored."""
    path = settings_file(tmp_path, "timeouts:\n  redis:\n    operations:\n      get: 0.2\n")
    with pytest.raises(ConfigurationError, match=r"'timeouts' at the top level.*'default:'"):
        load_config(settings_files=[path])


def test_package_operation_names_stay_resolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that makes redis.get ambiguous is reported where it was added."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__CONNECTION__GET", "3")
    with pytest.raises(ConfigurationError) as caught:
        load_config()
    (problem,) = caught.value.problems
    assert problem.key == "timeouts.redis.connection.get"
    assert problem.source == "AUTOBOT_TIMEOUTS__REDIS__CONNECTION__GET"
    assert "'redis.get'" in problem.reason


def test_every_bad_exception_name_reported(tmp_path: Path) -> None:
    """All bad entries of one exception list are reported together."""
    path = settings_file(
        tmp_path,
        "default:\n  circuit_breaker:\n    default:\n"
        "      ignore_exceptions: [TimeoutError, nosuch.module.Error, KeyError]\n",
    )
    with pytest.raises(ConfigurationError) as caught:
        load_config(settings_files=[path])
    reasons = [
        problem.reason
        for problem in caught.value.problems
        if problem.key.startswith("circuit_breaker.default")
    ]
    assert len(reasons) == 2
    assert any("cannot be ignored" in reason for reason in reasons)


def test_validate_notes_socket_timeout() -> None:
    """config validate notes Redis timeouts that the socket timeout cuts short."""
    result = CliRunner().invoke(main, ["config", "validate"])
    assert result.exit_code == 0
    assert "note: timeouts.redis.operations.pipeline (5 s) is longer than" in result.output
    assert "operations.get" not in result.output


def test_demo_bad_settings_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo reports invalid settings in one message, without a traceback."""
    monkeypatch.setenv("AUTOBOT_TIMEOUTS__REDIS__OPERATIONS__GET", "abc")
    result = CliRunner().invoke(main, ["demo", "--duration", "1"])
    assert result.exit_code == 1
    assert "timeouts.redis.operations.get" in result.output
    assert "Traceback" not in result.output


def test_deployable_settings_copy_loads() -> None:
    """config/settings.yaml loads as a settings file and matches the packaged values."""
    path = Path(__file__).resolve().parents[2] / "config" / "settings.yaml"
    for env in ("development", "production"):
        layered = load_config(env, [path])
        packaged = load_config(env)
        assert layered.timeouts == packaged.timeouts
        assert layered.circuit_breaker == packaged.circuit_breaker


async def test_second_watcher_rejected() -> None:
    """Only one watcher can own SIGHUP; a second is rejected until the first stops."""
    from autobot_otel import watch_config

    first = watch_config()
    try:
        with pytest.raises(RuntimeError, match="already active"):
            watch_config()
    finally:
        first.stop()
    watch_config(sighup=False).stop()


async def test_reload_requested_during_reload_runs(tmp_path: Path) -> None:
    """A reload requested while one runs is followed by one more, so no edit is lost."""
    import asyncio

    from autobot_otel import _config, watch_config

    path = settings_file(tmp_path, "default:\n  timeouts:\n    llm:\n      fast: 2\n")
    configure(settings_files=[path])
    original = _config._prepare_reload

    def slow_prepare() -> object:
        result = original()
        # The second edit lands after this reload has read the files.
        path.write_text("default:\n  timeouts:\n    llm:\n      fast: 6\n")
        return result

    watcher = watch_config(sighup=False)
    try:
        _config._prepare_reload = slow_prepare  # type: ignore[assignment]
        path.write_text("default:\n  timeouts:\n    llm:\n      fast: 4\n")
        watcher.request_reload()
        await asyncio.sleep(0)
        _config._prepare_reload = original
        watcher.request_reload()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if get_config().timeouts["llm.fast"] == 6.0:
                break
        assert get_config().timeouts["llm.fast"] == 6.0
    finally:
        _config._prepare_reload = original
        watcher.stop()
