"""``reconcile.toml``: settings for every command, below flags and ``RECONCILE_*`` variables.

The file holds a ``[reconcile]`` table (or bare top-level keys). Each key sets the parameter of
that name in every command that has it; an unknown key or a value of the wrong type is an
error naming the file and the key, with the closest known key when there is one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from reconciler.catalog import did_you_mean
from reconciler.errors import ConfigError

CONFIG_FILE = "reconcile.toml"
#: reconcile.toml keys: (the parameter each one sets in every command that has it, its type).
KEYS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "catalog": ("catalog", str), "state": ("state", str), "profile": ("profile", str),
    "endpoint": ("endpoint", str), "format": ("fmt", str), "templates": ("templates", str),
    "strict": ("strict", bool), "parallelism": ("parallelism", int), "drift": ("drift", str),
    "target_parallelism": ("target_parallelism", int),
    "log_format": ("log_format", str), "connect_timeout": ("connect_timeout", (int, float)),
    "read_timeout": ("read_timeout", (int, float)), "retries": ("retries", int),
    "request_timeout": ("request_timeout", (int, float)),
    "settle_time": ("settle_time", (int, float)), "os_cloud": ("os_cloud", str),
    "interface": ("interface", str), "cacert": ("cacert", str),
    "lock_timeout": ("lock_timeout", (str, int, float)),
    "allow_disk_formats": ("allow_disk_format", list),
    "allow_container_formats": ("allow_container_format", list),
}


def load(path: Path) -> dict[str, Any]:
    """The settings of a reconcile.toml file as {parameter name: value}, each one checked."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    section = data.get("reconcile", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: [reconcile] must be a table")
    settings: dict[str, Any] = {}
    for key, value in section.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown setting {key!r}"
                              + did_you_mean(key, tuple(KEYS)))
        param, kind = KEYS[key]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: setting {key!r} must be a list of strings, like "
                                  f'["zvhd", "zvhd2"]; not {value!r}')
            settings[param] = tuple(value)
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            names = kind.__name__ if isinstance(kind, type) else "number"
            raise ConfigError(f"{path}: setting {key!r} must be a {names.replace('str', 'string')}"
                              f", not {type(value).__name__} ({value!r})")
        settings[param] = value
    return settings
