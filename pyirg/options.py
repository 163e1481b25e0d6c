"""Command-line options declared once, on the dataclass that holds them.

Why: a config whose fields are re-listed as ``add_argument`` calls and again as
constructor arguments drifts (a field without a flag, a flag without help). Here each
field carries its help text in ``metadata``; :func:`add_options` makes the flags from
the fields and :func:`from_args` builds the dataclass back from the parsed namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))


def option(default: Any, help: str, group: str | None = None, **argparse_kwargs: Any) -> Any:
    """A dataclass field with its command-line help, the help section it is listed under
    (``group``, else the parser's own options) and extra ``add_argument`` keywords."""
    meta = {"help": help, "group": group, "argparse": argparse_kwargs}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default (a tuple) for an option")
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field_name: str) -> str:
    """``student_width`` -> ``--student-width``."""
    return "--" + field_name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of ``cls`` that has help metadata, default from the field.

    bool fields become ``--name``/``--no-name`` switches, tuples ``nargs="+"`` lists.
    Use ``argparse.ArgumentDefaultsHelpFormatter`` so the help shows each default.
    """
    hints = typing.get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        title = f.metadata.get("group")
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        target = parser if title is None else groups[title]
        kind = hints[f.name]
        kwargs: dict[str, Any] = {"default": f.default, "help": f.metadata["help"]}
        kwargs.update(f.metadata.get("argparse", {}))
        origin = typing.get_origin(kind)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            kwargs.setdefault("type", typing.get_args(kind)[0])
            kwargs["nargs"] = "+"
            kwargs["default"] = list(f.default)
        elif origin in _UNIONS:  # X | None
            kwargs.setdefault("type", next(a for a in typing.get_args(kind) if a is not type(None)))
        else:
            kwargs.setdefault("type", Path if kind is Path else kind)
        flag = kwargs.pop("flag", flag_name(f.name))
        target.add_argument(flag, dest=f.name, **kwargs)


def _is_tuple(hint: Any) -> bool:
    """Whether a field's type is a tuple, or a tuple or None."""
    kinds = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
    return any(typing.get_origin(k) is tuple for k in kinds)


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass from parsed options (tuples restored), with ``overrides`` applied."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if _is_tuple(hints[f.name]) and value is not None:
            value = tuple(value)
        values[f.name] = value
    values.update(overrides)
    return cls(**values)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default after its help, except where there is none to show.

    ``None`` (the help says what happens instead, e.g. "the solver's") and the ``False``
    of an on/off switch would only add noise.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or (action.nargs == 0 and action.default is False):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), exit status 2,
    and whose help shows the defaults (:class:`HelpFormatter`).

    argparse's own prints the whole usage first, which for pyirg's long option lists
    buries the one line that matters; ``--help`` still shows it.
    """

    def __init__(self, *args: Any, formatter_class: type = HelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser_for(cls: type, prog: str, description: str) -> ArgumentParser:
    """A command's whole parser when its options are the fields of ``cls``."""
    parser = ArgumentParser(prog=prog, description=description)
    add_options(parser, cls)
    return parser


def config_record(cfg: Any) -> dict[str, Any]:
    """An options dataclass as the JSON records hold it (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


def given_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The dests whose value differs from the parser's default: what the user asked for."""
    defaults = vars(parser.parse_args([]))
    return {k for k, v in vars(args).items() if v != defaults.get(k)}


def number_problem(name: str, value: float, *, positive: bool) -> str | None:
    """Why ``value`` is not a usable width/weight: non-finite, or not > 0 (``positive``) /
    not >= 0; None when it is fine. One wording for every command that checks numbers."""
    if positive and not (math.isfinite(value) and value > 0):
        return f"{name} must be a positive finite number, got {value}"
    if not positive and not (math.isfinite(value) and value >= 0):
        return f"{name} must be a finite number >= 0, got {value}"
    return None


def numbers_problem(
    values: Any, numbers: Mapping[str, bool], label: Callable[[str], str] = flag_name
) -> str | None:
    """The first field of ``values`` in ``numbers`` (field -> whether it must be > 0, else
    >= 0) that is not such a finite number, worded by :func:`number_problem` and named by
    ``label`` (the flag, by default); a field set to None (not given) is skipped."""
    for name, positive in numbers.items():
        value = getattr(values, name)
        problem = value is not None and number_problem(label(name), value, positive=positive)
        if problem:
            return problem
    return None


def count_problem(
    values: Any, least: Mapping[str, int], label: Callable[[str], str] = flag_name
) -> str | None:
    """The first field of ``values`` in ``least`` (field -> the least count it takes) that is
    below it, named by ``label``; a field set to None (not given) is skipped."""
    for name, bound in least.items():
        value = getattr(values, name)
        if value is not None and value < bound:
            return f"{label(name)} must be >= {bound}, got {value}"
    return None
