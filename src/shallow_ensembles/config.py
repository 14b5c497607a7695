"""Configuration machinery shared by every verb: YAML → frozen dataclasses, templates, ``--set``.

The schemas live beside their layers (``data.config.DataConfig``, ``model.config.ModelConfig``,
``training.config.TrainConfig``, ``md.config.MDConfig``,
``active_learning.config.ActiveLearningConfig``). Each is a frozen dataclass with the default of
every field beside it and an attribute docstring under it; the same declaration validates user
YAML (:func:`from_dict`, errors name the dotted key), prints templates (:func:`template`) and
documents the options. Numbers with a unit carry the unit in their name (``cutoff_A``,
``timestep_fs``). :func:`load_config` is the one loader: a file, a mapping or a built config, with
``--set a.b=value`` overrides.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

T = typing.TypeVar("T")


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal right under each field)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp`` and convert it; raise naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return from_dict(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"expected one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert_item(v, item, path, i) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = _numeric_string(value, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    return value


def _convert_item(value: Any, tp, path: str, index: int):
    """Item ``index`` of the list at ``path``; an item's own check that names its path
    ``path[]`` (a dataclass does not know its index) gets the index filled in."""
    try:
        return _convert(value, tp, f"{path}[{index}]")
    except ConfigError as err:
        if err.path.startswith(f"{path}[]"):
            raise ConfigError(err.path.replace(f"{path}[]", f"{path}[{index}]", 1),
                              err.detail) from None
        raise


def _numeric_string(value: str, path: str) -> float:
    """``float(value)`` for a numeric string such as YAML's ``1e-3``; else a ConfigError."""
    try:
        return float(value)
    except ValueError:
        raise ConfigError(path, f"expected a number, got the string {value!r} (write numbers "
                          "without quotes, e.g. 0.001 or 1.0e-3)") from None


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``; unknown keys and wrong types name their path."""
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(dotted, f"unknown option{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(path or cls.__name__, str(err)) from err


def to_dict(obj) -> dict:
    """Plain-Python (YAML-safe) dictionary of a config dataclass."""

    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        return value

    return plain(obj)


def template(cls, indent: int = 0) -> str:
    """Commented YAML of every option of ``cls`` with its default, made from the dataclass."""
    docs = field_docs(cls)
    pad = " " * indent
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in docs:
            lines.append(f"{pad}# {docs[f.name]}")
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else f.default_factory()  # type: ignore[misc]
            if f.default_factory is not dataclasses.MISSING
            else None
        )
        if dataclasses.is_dataclass(hints[f.name]) or dataclasses.is_dataclass(default):
            lines.append(f"{pad}{f.name}:")
            lines.append(template(type(default) if default is not None else hints[f.name],
                                  indent + 2))
        else:
            dumped = yaml.safe_dump(to_dict(default) if dataclasses.is_dataclass(default)
                                    else (list(default) if isinstance(default, tuple) else default),
                                    default_flow_style=True).strip()
            dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{f.name}: {dumped}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(text, "expected KEY.PATH=VALUE")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_yaml(path: str | Path, overrides: typing.Sequence[str] = ()) -> dict:
    """Read a YAML mapping and apply ``--set a.b=c`` overrides; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(str(path), "no such file") from err
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(str(path),
                          f"expected a mapping at the top level, got {type(data).__name__}")
    return apply_overrides(data, overrides)


def apply_overrides(data: dict, overrides: typing.Sequence[str]) -> dict:
    """Apply ``a.b=c`` overrides to the nested mapping ``data`` in place; returns it."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:  # absent, or an empty section (``key:`` in YAML)
                node[k] = {}
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(text, f"'{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_config(cls: type[T], source: T | dict | str | Path, overrides: typing.Sequence[str] = (),
                prepare: Callable[[dict, Path], dict] | None = None) -> T:
    """Validate a config of class ``cls`` given as a config, a mapping or a YAML file.

    Parameters
    ----------
    cls : the config dataclass
    source : an instance of ``cls`` (returned as is), a mapping, or the path of a YAML file
    overrides : ``a.b=value`` strings (``--set``), applied after reading
    prepare : ``prepare(data, folder) -> data`` applied to a file's mapping before the
        overrides (e.g. reading relative paths from the file's folder ``folder``)

    Raises
    ------
    ConfigError naming the file, or the dotted key of the first invalid option.
    """
    if isinstance(source, cls):
        if overrides:
            raise ConfigError(str(overrides[0]), "overrides need a file or a mapping")
        return source
    if isinstance(source, str | Path):
        data = load_yaml(source)
        if prepare is not None:
            data = prepare(data, Path(source).resolve().parent)
    elif isinstance(source, dict):
        data = _copy_tree(source)
    else:
        raise ConfigError("", f"expected a YAML file, a mapping or a {cls.__name__}, got "
                          f"{source!r}")
    return from_dict(cls, apply_overrides(data, overrides))


def _copy_tree(data: dict) -> dict:
    """A copy of nested mappings (so that overrides never change the caller's mapping)."""
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in data.items()}
