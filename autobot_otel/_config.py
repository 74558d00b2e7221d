"""Layered configuration: Dynaconf loading, timeout validation, sources and reload.

Layers, lowest first:

1. the packaged ``defaults.yaml`` (its ``default`` section, then the section of the
   active environment);
2. user settings files named by ``settings_files=`` or ``AUTOBOT_SETTINGS_FILES``
   (separated by ``,`` or ``os.pathsep``), each with the same sections;
3. ``AUTOBOT_*`` environment variables, with ``__`` between nested keys.

Nested tables merge across layers, so a layer that sets one key keeps its siblings.
A ``Config`` is an immutable, validated snapshot of one environment. The process-wide
snapshot is replaced as a whole by ``configure()`` or ``reload_config()``, and only after
the new one has passed validation.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dynaconf import Dynaconf

from ._errors import ConfigProblem, ConfigurationError, UnknownOperationError

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "ENVIRONMENT_VARIABLE",
    "SETTINGS_FILES_VARIABLE",
    "Config",
    "ConfigWatcher",
    "Timeouts",
    "configure",
    "get_config",
    "load_config",
    "reload_config",
    "watch_config",
]

logger = logging.getLogger("autobot_otel")

ENVIRONMENT_VARIABLE = "AUTOBOT_ENV"
SETTINGS_FILES_VARIABLE = "AUTOBOT_SETTINGS_FILES"
ENV_PREFIX = "AUTOBOT"
DEFAULT_ENVIRONMENT = "development"
PACKAGED_DEFAULTS = Path(__file__).with_name("defaults.yaml")

# Timeouts above one day are almost always a unit mistake (milliseconds written where
# seconds are expected), and nothing this package bounds should wait that long.
MAX_TIMEOUT_SECONDS = 86_400.0

_SETTINGS_SUFFIXES = {".yaml", ".yml", ".toml", ".json"}
# Operation names the package itself uses; settings must keep them resolvable.
PACKAGE_OPERATIONS = (
    "redis.get",
    "redis.set",
    "redis.hgetall",
    "redis.pipeline",
    "redis.scan_iter",
)
# Settings groups that belong inside an environment section, never at the top level.
_SETTING_GROUPS = {"timeouts", "circuit_breaker"}
# Top-level sections of a settings file that are not environments.
_NON_ENVIRONMENT_SECTIONS = {"default", "global", "dynaconf_merge"}


# --------------------------------------------------------------------------- loading


def _split_paths(value: str) -> list[str]:
    parts: list[str] = []
    for chunk in value.split(","):
        parts.extend(piece for piece in chunk.split(os.pathsep) if piece.strip())
    return [part.strip() for part in parts]


def _resolve_settings_files(settings_files: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    """Return the user settings files, checking that each exists and can be read."""
    if settings_files is None:
        raw = os.environ.get(SETTINGS_FILES_VARIABLE, "")
        origin = f"environment variable {SETTINGS_FILES_VARIABLE}"
        names: list[str | os.PathLike[str]] = list(_split_paths(raw))
    else:
        origin = "settings_files argument"
        names = list(settings_files)

    paths: list[Path] = []
    for name in names:
        path = Path(name).expanduser().resolve()
        if path.suffix.lower() not in _SETTINGS_SUFFIXES:
            raise ConfigurationError(
                f"settings file {str(name)!r} (from {origin}) has an unsupported type; "
                f"use one of {', '.join(sorted(_SETTINGS_SUFFIXES))}"
            )
        if not path.is_file():
            raise ConfigurationError(
                f"settings file {str(name)!r} (from {origin}) was not found; "
                "fix the path or remove it from the list"
            )
        paths.append(path)
    return paths


def _read_sections(path: Path) -> dict[str, Any]:
    """Parse one settings file to find its environment sections and report syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"settings file {str(path)!r} is not valid UTF-8 ({exc.reason} at byte "
            f"{exc.start}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(f"settings file {str(path)!r} cannot be read: {exc}") from exc
    try:
        if path.suffix.lower() in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"settings file {str(path)!r} is not valid: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"settings file {str(path)!r} must contain a mapping of environment sections "
            f"(default, development, production), not {type(data).__name__}"
        )
    for section, body in data.items():
        if str(section).lower() in _SETTING_GROUPS:
            raise ConfigurationError(
                f"settings file {str(path)!r} has {section!r} at the top level, where it "
                "would be taken for an environment; indent it under an environment "
                "section, for example 'default:'"
            )
        if body is not None and not isinstance(body, dict):
            raise ConfigurationError(
                f"settings file {str(path)!r}: section {section!r} must be a mapping, "
                f"not {type(body).__name__} {body!r}"
            )
    return data


def _choose_environment(env: str | None, declared: set[str]) -> str:
    if env is not None:
        origin = "the --env option or env argument"
        name = env
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        origin = f"environment variable {ENVIRONMENT_VARIABLE}"
        name = os.environ[ENVIRONMENT_VARIABLE]
    else:
        return DEFAULT_ENVIRONMENT
    normalized = name.strip().lower()
    if normalized not in declared:
        raise ConfigurationError(
            f"unknown environment {name!r} (from {origin}); known environments: "
            f"{', '.join(sorted(declared))}. Add a section of that name to a settings file "
            "or choose a known one"
        )
    return normalized


def _load_dynaconf(environment: str, files: list[Path]) -> Dynaconf:
    settings = Dynaconf(
        settings_files=[str(PACKAGED_DEFAULTS), *(str(path) for path in files)],
        environments=True,
        env=environment,
        env_switcher=ENVIRONMENT_VARIABLE,
        envvar_prefix=ENV_PREFIX,
        merge_enabled=True,
        load_dotenv=False,
    )
    try:
        settings.as_dict()  # Dynaconf loads lazily; parse every layer now.
    except Exception as exc:  # Dynaconf wraps parser errors in many types.
        layers = [str(path) for path in files] or ["packaged defaults"]
        # Dynaconf parses "@int", "@json" and similar markers in variables; name the
        # variables that use one, since the error itself does not.
        marked = sorted(
            name
            for name, value in os.environ.items()
            if name.upper().startswith(f"{ENV_PREFIX}_") and value.lstrip().startswith("@")
        )
        if marked:
            layers.append(f"environment variables {', '.join(marked)}")
        raise ConfigurationError(
            f"could not load settings from {' and '.join(layers)}: {exc}"
        ) from exc
    return settings


# --------------------------------------------------------------------------- sources


def _plain(value: Any) -> Any:
    """Convert Dynaconf boxes into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key).lower(): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _identical(left: Any, right: Any) -> bool:
    """Compare values and their types: ``True == 1.0`` in Python, but not as a setting."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(
            _identical(left[key], right[key]) for key in left
        )
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_identical, left, right))
    return bool(left == right)


def _describe_source(entry: Mapping[str, Any], key: str) -> str:
    loader = entry.get("loader", "")
    identifier = str(entry.get("identifier", ""))
    env = str(entry.get("env", "")).lower()
    if loader.startswith("env"):
        return _environment_variable_for(key) or f"an {ENV_PREFIX}_* environment variable"
    if identifier == str(PACKAGED_DEFAULTS):
        return f"packaged defaults [{env}]"
    if identifier:
        return f"{identifier} [{env}]" if env else identifier
    return loader or "unknown source"


def _environment_variable_for(key: str) -> str | None:
    """Return the AUTOBOT_* variable that sets ``key`` or one of its parent groups."""
    parts = key.lower().split(".")
    prefix = f"{ENV_PREFIX}_"
    best: str | None = None
    best_depth = 0
    for name in os.environ:
        if not name.upper().startswith(prefix):
            continue
        path = name[len(prefix) :].lower().split("__")
        if parts[: len(path)] == path and len(path) > best_depth:
            best, best_depth = name, len(path)
    return best


def _source_of(settings: Dynaconf, key: str) -> str:
    from dynaconf.utils.inspect import get_history

    try:
        history = get_history(settings, key=key)
    except Exception:  # Dynaconf raises several types for keys absent from a layer.
        return "unknown source"
    if not history:
        return "unknown source"
    # The source is the layer that last changed the value. Later layers that only
    # carried it forward, as a merge of a sibling key does, are not its origin.
    chosen = history[0]
    previous = _plain(history[0].get("value"))
    for entry in history[1:]:
        value = _plain(entry.get("value"))
        if not _identical(value, previous):
            chosen = entry
        previous = value
    return _describe_source(chosen, key)


# --------------------------------------------------------------------------- validation


def timeout_problem(value: object) -> str | None:
    """Return why ``value`` is not a valid timeout in seconds, or None if it is valid.

    The reason never repeats the value, which the caller shows masked where needed.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return "must be a number of seconds, not text"
            return "must be a number of seconds, not quoted text; remove the quotes"
        if isinstance(value, Mapping):
            return "must be a number of seconds, not a group of keys"
        return f"must be a number of seconds, not {type(value).__name__}"
    # Integers are compared as integers: float() of a huge one raises OverflowError.
    if isinstance(value, float):
        if math.isnan(value):
            return "must be a number of seconds, not NaN"
        if math.isinf(value):
            return "must be finite; an infinite timeout bounds nothing"
    if value <= 0:
        return "must be greater than zero"
    if value > MAX_TIMEOUT_SECONDS:
        return f"must be at most {MAX_TIMEOUT_SECONDS:g} seconds (one day); is the unit right?"
    return None


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, path)
        else:
            yield path, value


def _subtree(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _packaged_schema() -> dict[str, Any]:
    data = yaml.safe_load(PACKAGED_DEFAULTS.read_text(encoding="utf-8"))
    return dict(_flatten(data["default"]["timeouts"]))


# --------------------------------------------------------------------------- Config


@dataclass(frozen=True)
class Config:
    """A validated, immutable snapshot of the settings of one environment.

    ``timeouts`` maps dotted keys relative to ``timeouts`` (``"redis.operations.get"``) to
    seconds. ``circuit_breaker`` is the raw ``circuit_breaker`` section; the breaker
    module validates it. ``problems`` is empty for a config that passed validation.
    """

    environment: str
    settings_files: tuple[Path, ...]
    timeouts: Mapping[str, float]
    circuit_breaker: Mapping[str, Any]
    problems: tuple[ConfigProblem, ...]
    config_hash: str
    _settings: Dynaconf = field(repr=False, compare=False)
    _short_names: Mapping[str, str | None] = field(repr=False, compare=False)

    def source_of(self, key: str) -> str:
        """Return where the effective value of dotted ``key`` came from."""
        return _source_of(self._settings, key)

    @property
    def operation_names(self) -> list[str]:
        """Every operation name that resolves: full paths and unique short forms."""
        short = [name for name, target in self._short_names.items() if target is not None]
        return sorted({*self.timeouts, *short})

    def resolve_operation(self, name: str) -> str:
        """Return the timeout key that operation ``name`` uses.

        ``"redis.get"`` finds the leaf ``get`` among the groups of ``redis``; a full path
        (``"llamaindex.search.query"``) or a direct key (``"llm.fast"``) also works.
        """
        key = name.strip().lower()
        if key.startswith("timeouts."):
            key = key[len("timeouts.") :]
        if key in self.timeouts:
            return key
        if key in self._short_names:
            target = self._short_names[key]
            if target is not None:
                return target
            candidates = sorted(
                path
                for path in self.timeouts
                if path.split(".")[0] == key.split(".")[0]
                and path.split(".")[-1] == key.split(".")[-1]
            )
            raise UnknownOperationError(
                name,
                f"operation name {name!r} is ambiguous: it matches {', '.join(candidates)}; "
                "use the full path",
            )
        close = difflib.get_close_matches(key, self.operation_names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "."
        raise UnknownOperationError(
            name,
            f"no timeout is configured for operation {name!r}{hint} Declare it under "
            "'timeouts' in a settings file, or pass default= to use a fixed timeout",
        )

    def timeout_for(self, name: str) -> float:
        """Return the timeout in seconds for operation ``name``."""
        return self.timeouts[self.resolve_operation(name)]

    def raise_for_problems(self) -> None:
        """Raise one ConfigurationError listing every invalid setting, if there is any."""
        if self.problems:
            raise ConfigurationError(
                f"invalid settings for environment {self.environment!r} "
                f"({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})",
                self.problems,
            )


def _short_name_index(keys: Sequence[str]) -> dict[str, str | None]:
    """Map ``system.leaf`` to its full key, or to None where the leaf is not unique."""
    index: dict[str, str | None] = {}
    for key in keys:
        parts = key.split(".")
        if len(parts) < 3:
            continue
        short = f"{parts[0]}.{parts[-1]}"
        index[short] = None if short in index else key
    return index


def load_config(
    env: str | None = None,
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    strict: bool = True,
) -> Config:
    """Load the settings of ``env`` (default: ``AUTOBOT_ENV``, else development).

    With ``strict`` (the default) an invalid setting raises ConfigurationError listing
    every problem. Otherwise the problems are returned in ``Config.problems``, and invalid
    timeouts are left out of ``Config.timeouts``.
    """
    files = _resolve_settings_files(settings_files)
    declared = {"development", "production"}
    for path in [PACKAGED_DEFAULTS, *files]:
        declared.update(
            str(section).lower()
            for section in _read_sections(path)
            if str(section).lower() not in _NON_ENVIRONMENT_SECTIONS
        )
    environment = _choose_environment(env, declared)
    settings = _load_dynaconf(environment, files)

    raw = _plain(settings.as_dict())
    timeouts_tree = raw.get("timeouts", {})
    problems: list[ConfigProblem] = []
    timeouts: dict[str, float] = {}

    if not isinstance(timeouts_tree, Mapping):
        problems.append(
            ConfigProblem(
                "timeouts", timeouts_tree, _source_of(settings, "timeouts"), "must be a group"
            )
        )
        timeouts_tree = {}
    flat = dict(_flatten(timeouts_tree))

    replaced_groups: set[str] = set()
    for key in _packaged_schema():
        if key in flat or any(key.startswith(f"{group}.") for group in replaced_groups):
            continue
        children = [name for name in flat if name.startswith(f"{key}.")]
        if children:
            # A layer put a group of keys where a timeout belongs: report the timeout's
            # key, and do not take the keys below it as timeouts of their own.
            problems.append(
                ConfigProblem(
                    f"timeouts.{key}",
                    _subtree(timeouts_tree, key),
                    _source_of(settings, f"timeouts.{key}"),
                    "must be a number of seconds, not a group of keys",
                )
            )
            for name in children:
                flat.pop(name)
            continue
        # A required key is missing because a layer replaced one of its groups.
        parent = key
        while "." in parent and parent not in flat:
            parent = parent.rsplit(".", 1)[0]
        if parent in flat:
            value = flat[parent]
            problems.append(
                ConfigProblem(
                    f"timeouts.{parent}",
                    value,
                    _source_of(settings, f"timeouts.{parent}"),
                    f"must be a group of timeouts (it should contain timeouts.{key})",
                )
            )
            flat.pop(parent)
            replaced_groups.add(parent)
        else:
            problems.append(ConfigProblem(f"timeouts.{key}", None, "no layer", "is missing"))

    for key, value in flat.items():
        reason = timeout_problem(value)
        if reason is None:
            timeouts[key] = float(value)
        else:
            problems.append(
                ConfigProblem(
                    f"timeouts.{key}", value, _source_of(settings, f"timeouts.{key}"), reason
                )
            )

    breaker = raw.get("circuit_breaker", {})
    if not isinstance(breaker, Mapping):
        problems.append(
            ConfigProblem(
                "circuit_breaker",
                breaker,
                _source_of(settings, "circuit_breaker"),
                "must be a group with a 'default' section",
            )
        )
        breaker = {}

    problems.extend(_breaker_problems(breaker, settings))
    short_names = _short_name_index(sorted(timeouts))
    for name in PACKAGE_OPERATIONS:
        if name not in timeouts and short_names.get(name) is None and name in short_names:
            matches = sorted(
                key
                for key in timeouts
                if key.split(".")[0] == name.split(".")[0]
                and key.split(".")[-1] == name.split(".")[-1]
            )
            schema = _packaged_schema()
            added = [key for key in matches if key not in schema] or matches
            problems.append(
                ConfigProblem(
                    f"timeouts.{added[0]}",
                    timeouts[added[0]],
                    _source_of(settings, f"timeouts.{added[0]}"),
                    f"makes the operation name {name!r}, which the Redis integration uses, "
                    f"ambiguous ({', '.join(matches)}); rename or remove it",
                )
            )
    digest_input = json.dumps(
        {"environment": environment, "timeouts": timeouts, "circuit_breaker": breaker},
        sort_keys=True,
        default=str,
    )
    config = Config(
        environment=environment,
        settings_files=tuple(files),
        timeouts=timeouts,
        circuit_breaker=breaker,
        problems=tuple(problems),
        config_hash=hashlib.sha256(digest_input.encode()).hexdigest()[:12],
        _settings=settings,
        _short_names=short_names,
    )
    if strict:
        config.raise_for_problems()
    return config


def _breaker_problems(section: Mapping[str, Any], settings: Dynaconf) -> list[ConfigProblem]:
    """Validate the default breaker settings and every per-name override."""
    from ._breaker import breaker_settings_from_mapping

    problems: list[ConfigProblem] = []
    base = section.get("default", {})
    if not isinstance(base, Mapping):
        source = _source_of(settings, "circuit_breaker.default")
        return [ConfigProblem("circuit_breaker.default", base, source, "must be a group")]
    for name, override in section.items():
        key_prefix = f"circuit_breaker.{name}"
        if not isinstance(override, Mapping):
            problems.append(
                ConfigProblem(
                    key_prefix,
                    override,
                    _source_of(settings, key_prefix),
                    "must be a group of breaker settings",
                )
            )
            continue
        merged = {**base, **override}

        def source_of(key: str) -> str:
            return _source_of(settings, key)

        _, found = breaker_settings_from_mapping(merged, key_prefix=key_prefix, source_of=source_of)
        problems.extend(found)
    return problems


# --------------------------------------------------------------------------- process state

_lock = threading.Lock()
_active: Config | None = None
_listeners: list[Callable[[Config], None]] = []
_validators: list[Callable[[Config], list[ConfigProblem]]] = []
_reload_listeners: list[Callable[[str, Config | None], None]] = []


def get_config() -> Config:
    """Return the process-wide configuration, loading it on first use.

    The first load is strict: an invalid setting raises ConfigurationError, so a service
    does not start half configured.
    """
    config = _active
    if config is None:
        with _lock:
            if _active is None:
                _install(load_config())
            config = _active
    assert config is not None
    return config


def configure(
    env: str | None = None,
    settings_files: Sequence[str | os.PathLike[str]] | None = None,
) -> Config:
    """Load and validate settings, then make them the process-wide configuration.

    Decorated functions use the new timeouts from their next call. Raises
    ConfigurationError, and keeps the previous configuration, when a setting is invalid.
    """
    config = load_config(env, settings_files)
    _check_in_use(config)
    with _lock:
        _install(config)
    return config


def reload_config() -> bool:
    """Reload the settings with the same environment and files as the active ones.

    Returns True when the new settings were applied. An invalid reload keeps the last good
    configuration in force, logs one error listing every problem, and returns False.
    Breaker state survives; decorated functions use the new timeouts from their next call.
    """
    return _commit_reload(_prepare_reload())


def _prepare_reload() -> Config | ConfigurationError:
    """Load and check the new settings; this part may run in a worker thread."""
    current = get_config()
    try:
        config = load_config(current.environment, list(current.settings_files))
        _check_in_use(config)
    except ConfigurationError as exc:
        return exc
    return config


def _commit_reload(prepared: Config | ConfigurationError) -> bool:
    """Apply a prepared reload; call it on the thread that runs the decorated code."""
    if isinstance(prepared, ConfigurationError):
        logger.error(
            "config.reload_rejected: the last good configuration stays in force: %s",
            prepared,
            extra={"autobot.environment": get_config().environment},
        )
        _notify_reload("invalid", None)
        return False
    with _lock:
        _install(prepared)
    logger.info(
        "config.reloaded",
        extra={
            "autobot.environment": prepared.environment,
            "autobot.config_hash": prepared.config_hash,
        },
    )
    _notify_reload("success", prepared)
    return True


class ConfigWatcher:
    """Reloads the configuration on SIGHUP and, optionally, when a settings file changes.

    Create it with ``watch_config()`` from inside the running event loop; only one can be
    active per process. Loading happens in a worker thread, and the new settings are
    applied on the event loop's thread, where the decorated code and the circuit
    breakers run. A reload requested while one runs is not lost: one more reload follows.
    """

    def __init__(self, sighup: bool, poll_interval: float | None) -> None:
        import asyncio
        import signal

        global _active_watcher
        if poll_interval is not None and not (
            isinstance(poll_interval, int | float)
            and not isinstance(poll_interval, bool)
            and poll_interval > 0
        ):
            raise ValueError(
                f"poll_interval must be a number of seconds > 0, not {poll_interval!r}"
            )
        if _active_watcher is not None:
            raise RuntimeError(
                "a ConfigWatcher is already active in this process; call stop() on it "
                "before watch_config() starts another"
            )
        self._loop = asyncio.get_running_loop()
        self._sighup = sighup and hasattr(signal, "SIGHUP")
        self._poll_task: asyncio.Task[None] | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._pending = False
        if self._sighup:
            previous = signal.getsignal(signal.SIGHUP)
            if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
                logger.warning(
                    "config.sighup_handler_replaced: watch_config() replaces the process's "
                    "SIGHUP handler %r until stop()",
                    previous,
                )
            self._loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if poll_interval is not None:
            # Fingerprint the files now, so a change made before the poller first runs
            # is still seen as a change.
            seen = _file_fingerprints(get_config().settings_files)
            self._poll_task = self._loop.create_task(self._poll(float(poll_interval), seen))
        _active_watcher = self

    def request_reload(self) -> None:
        """Start a reload, or queue one more if a reload is running already."""
        if self._reloading is not None and not self._reloading.done():
            # The running reload may have read the files before this request's change.
            self._pending = True
            return
        self._reloading = self._loop.create_task(self._reload_until_current())

    async def _reload_until_current(self) -> None:
        await self.reload()
        while self._pending:
            self._pending = False
            await self.reload()

    async def reload(self) -> bool:
        """Reload now; return whether the new settings were applied."""
        import asyncio

        prepared = await asyncio.to_thread(_prepare_reload)
        return _commit_reload(prepared)

    async def _poll(self, interval: float, seen: list[str | None]) -> None:
        import asyncio

        while True:
            await asyncio.sleep(interval)
            current = _file_fingerprints(get_config().settings_files)
            if current != seen:
                seen = current
                self.request_reload()

    def stop(self) -> None:
        """Stop watching: remove the SIGHUP handler and the file poller."""
        import signal

        global _active_watcher
        if self._sighup:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        if _active_watcher is self:
            _active_watcher = None


_active_watcher: ConfigWatcher | None = None


def _file_fingerprints(paths: Sequence[Path]) -> list[str | None]:
    # Content hashes, not modification times: two writes within the file system's
    # timestamp resolution, or of the same size, must still count as a change.
    fingerprints: list[str | None] = []
    for path in paths:
        try:
            fingerprints.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError:
            fingerprints.append(None)
    return fingerprints


def watch_config(*, sighup: bool = True, poll_interval: float | None = None) -> ConfigWatcher:
    """Reload settings on SIGHUP and, with ``poll_interval`` seconds, on file changes.

    Call it from inside the running event loop, for example in a FastAPI lifespan
    handler, and call ``stop()`` on the result at shutdown.
    """
    return ConfigWatcher(sighup, poll_interval)


def _check_in_use(config: Config) -> None:
    """Reject a configuration that leaves code already running without its settings."""
    problems = [problem for validator in _validators for problem in validator(config)]
    if problems:
        raise ConfigurationError(
            f"settings for environment {config.environment!r} do not fit the running code",
            problems,
        )


def add_config_validator(validator: Callable[[Config], list[ConfigProblem]]) -> None:
    """Check every configuration with ``validator`` before it becomes active."""
    _validators.append(validator)


def _install(config: Config) -> None:
    global _active
    _active = config
    for listener in list(_listeners):
        listener(config)


def _notify_reload(status: str, config: Config | None) -> None:
    for listener in list(_reload_listeners):
        try:
            listener(status, config)
        except Exception:
            logger.exception("config.reload_listener_failed")


def add_config_listener(listener: Callable[[Config], None]) -> None:
    """Call ``listener`` with every configuration that becomes active."""
    _listeners.append(listener)


def add_reload_listener(listener: Callable[[str, Config | None], None]) -> None:
    """Call ``listener(status, config)`` after every reload attempt."""
    _reload_listeners.append(listener)


def _reset_for_tests() -> None:
    """Forget the process-wide configuration so that the next use loads it again."""
    global _active
    with _lock:
        _active = None


# --------------------------------------------------------------------------- accessor


class Timeouts:
    """Read configured timeouts, for the active environment or a named one.

    Paths are relative to ``timeouts``: ``"redis.operations.get"``. The module-level
    ``timeouts`` instance reads the process-wide configuration.
    """

    def __init__(self, config: Config | None = None) -> None:
        self._config = config

    def _config_for(self, env: str | None) -> Config:
        active = self._config or get_config()
        if env is None or env.strip().lower() == active.environment:
            return active
        return load_config(env, list(active.settings_files))

    @staticmethod
    def _key(path: str) -> str:
        key = path.strip().lower()
        return key[len("timeouts.") :] if key.startswith("timeouts.") else key

    def get(self, path: str, env: str | None = None) -> float:
        """Return the timeout at ``path`` in seconds."""
        config = self._config_for(env)
        key = self._key(path)
        try:
            return config.timeouts[key]
        except KeyError:
            close = difflib.get_close_matches(key, list(config.timeouts), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            if self.group(path, env):
                hint = f"; it is a group, use group({path!r})"
            raise KeyError(f"no timeout at 'timeouts.{key}'{hint}") from None

    def group(self, path: str, env: str | None = None) -> dict[str, float]:
        """Return every timeout below group ``path``, keyed relative to the group."""
        config = self._config_for(env)
        prefix = self._key(path).rstrip(".") + "."
        return {
            key[len(prefix) :]: value
            for key, value in config.timeouts.items()
            if key.startswith(prefix)
        }

    def validate(self, env: str | None = None) -> None:
        """Raise ConfigurationError listing every invalid timeout and where it came from."""
        active = self._config or get_config()
        target = env or active.environment
        load_config(target, list(active.settings_files), strict=False).raise_for_problems()

    def for_operation(self, name: str) -> float:
        """Return the timeout of operation ``name`` (``"redis.get"``, ``"llm.fast"``)."""
        config = self._config or get_config()
        return config.timeout_for(name)
