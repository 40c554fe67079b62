"""Settings from a TOML file, environment variables and command-line flags.

Flags override the environment, which overrides the file, which overrides the defaults. Every
setting is a field of a frozen dataclass with its default and a `help` text; the same table
documents the settings (`krewe orchestrator --help`, README) and generates the flags. A bad value
stops start-up with one line naming the setting.
"""

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

__all__ = ["SettingsError", "flag_options", "load_settings", "setting"]

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that cannot be used; the message starts with the setting's name."""


def setting(default: Any, help: str, *, secret: bool = False) -> Any:
    """A settings field with its help text; a secret one is left out of the settings' repr."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}, repr=not secret
        )
    return dataclasses.field(default=default, metadata={"help": help}, repr=not secret)


def _convert(name: str, kind: Any, raw: Any) -> Any:
    """Convert a value from TOML (typed) or the environment/flags (text) to the field's type."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if raw is None or raw == "":
            return None
        return _convert(name, options[0], raw)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true or false, not {raw!r}")
        if kind is int:
            if isinstance(raw, bool | float):
                raise ValueError(f"expected an integer, not {raw!r}")
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(f"expected a number, not {raw!r}")
            return float(raw)
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError(f"expected text, not {raw!r}")
            return raw
        if kind is Path:
            return Path(str(raw))
        if origin is list:
            items = (
                raw
                if isinstance(raw, list)
                else [item.strip() for item in str(raw).split(",") if item.strip()]
            )
            return [_convert(name, typing.get_args(kind)[0], item) for item in items]
        if origin is dict:
            if isinstance(raw, Mapping):
                pairs: list[tuple[Any, Any]] = list(raw.items())
            else:
                pairs = []
                for item in filter(str.strip, str(raw).split(",")):
                    key, equals, value = item.partition("=")
                    if not equals:
                        raise ValueError(f"expected key=value pairs separated by commas, not {raw!r}")
                    pairs.append((key, value))
            value_kind = typing.get_args(kind)[1]
            return {str(key).strip(): _convert(name, value_kind, value) for key, value in pairs}
    except (TypeError, ValueError) as error:
        raise SettingsError(f"{name}: {error}") from None
    raise SettingsError(f"{name}: unsupported setting type {kind}")


def load_settings(
    cls: type[T],
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    env_prefix: str = "KREWE_",
) -> T:
    """Build `cls` from defaults < TOML file < environment (`env_prefix` + NAME) < flags."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    if file is not None:
        try:
            document = tomllib.loads(Path(file).read_text())
        except OSError as error:
            raise SettingsError(f"config file {file}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"config file {file}: {error}") from None
        for key, raw in document.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise SettingsError(f"{key}: unknown setting in {file}")
            values[name] = _convert(name, hints[name], raw)
    for name in fields:
        variable = env_prefix + name.upper()
        if variable in environ:
            values[name] = _convert(name, hints[name], environ[variable])
    for name, raw in (flags or {}).items():
        if raw is not None:
            values[name] = _convert(name, hints[name], raw)
    try:
        return cls(**values)
    except TypeError as error:
        raise SettingsError(str(error)) from None


def flag_options(
    cls: type[Any], skip: tuple[str, ...] = ()
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Click options, one per setting, named `--setting-name`; unset flags arrive as None."""

    def decorate(function: Any) -> Any:
        for field in reversed(dataclasses.fields(cls)):
            if field.name in skip:
                continue
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            text = f"{field.metadata.get('help', '')} [default: {default!r}]"
            function = click.option(f"--{field.name.replace('_', '-')}", field.name, default=None, help=text)(
                function
            )
        return function

    return decorate
