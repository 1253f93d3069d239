"""click options generated from the options dataclasses (surgeon.options.option fields), so
a default, a choice list or a help text is written once, on the field the engine reads.

`options_from(PruneOptions)` decorates a command with one option per field; inside the
command, `build(PruneOptions, kw)` pops those values and gives the dataclass back, or, with
`options_from(CanaryOptions, into="options")`, the command takes the record itself as
`options` (mergekit's `add_merge_options` does the same). A field holding a nested record
(PruneOptions.run, a RunSettings) is flattened: its used fields are options of their own
(--device, --dtype, --tokenizer, as before the record existed), and `build` nests them again.

An option that was renamed keeps its old spelling for one release (`renamed`, or a field's
`aliases`): accepted, hidden from --help, and given to the command under the new name.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import click

from surgeon.options import cli_fields, nested_record, used_fields

PATH_TYPES = {
    "file": click.Path(path_type=Path, exists=True, dir_okay=False),
    "dir": click.Path(path_type=Path, exists=True, file_okay=False),
    "any": click.Path(path_type=Path, exists=True),
}


def options_from(
    cls: type, *, only: Iterable[str] | None = None, skip: Iterable[str] = (), into: str | None = None, **extra: dict
):
    """A decorator adding CLS's CLI fields as click options (in declaration order), a nested
    record's fields in its place.

    only/skip choose fields by name; extra["field"] = {...} adds or replaces click keywords
    for one field (a callback that parses a value, say). into: the command takes CLS, built
    from those values, as this keyword instead of the values themselves."""
    only, skip = (list(only) if only is not None else None), tuple(skip)
    leaves = _leaves(cls, only, skip)

    def decorate(func: Callable) -> Callable:
        if into is not None:  # innermost: an old option name has been given its new one by then
            func = _taking_record(cls, into, only, skip)(func)
        for field, hint in reversed(leaves):
            func = _option(field, hint, extra.get(field.name, {}))(func)
        return func

    return decorate


def build(cls: type, kw: dict, *, only: Iterable[str] | None = None, skip: Iterable[str] = (), **fixed: Any):
    """CLS from the click values of its CLI fields, popped from kw (paths become strings, as
    the engine records them), a nested record built from its own fields' values; `fixed`
    sets fields the command decides itself."""
    values = {}
    for field in _chosen(cls, only, skip):
        nested = nested_record(field)
        if nested is not None:
            values[field.name] = build(nested, kw, only=[f.name for f in used_fields(field, nested)])
            continue
        value = kw.pop(field.name)
        values[field.name] = str(value) if isinstance(value, Path) else value
    return cls(**values, **fixed)


def _taking_record(cls: type, into: str, only, skip) -> Callable:
    """A decorator: FUNC called with CLS, built from its options' values, as keyword INTO."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[into] = build(cls, kwargs, only=only, skip=skip)
            return func(*args, **kwargs)

        # functools.wraps copied FUNC's marks: a `renamed` option added later must wrap again,
        # outside this one, to hand its value over before the record is built
        wrapper._takes_old_names = False  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _chosen(cls: type, only, skip) -> list[dataclasses.Field]:
    fields = cli_fields(cls)
    if only is not None:
        wanted = list(only)
        fields = [f for f in fields if f.name in wanted]
    return [f for f in fields if f.name not in set(skip)]


def _leaves(cls: type, only, skip) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type hint) of each option CLS offers: its chosen fields, each nested record
    replaced by its used fields. Two with one name would be one click option: refused."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[dataclasses.Field, Any]] = []
    for field in _chosen(cls, only, skip):
        nested = nested_record(field)
        if nested is None:
            out.append((field, hints[field.name]))
        else:
            out += _leaves(nested, [f.name for f in used_fields(field, nested)], ())
    names = [field.name for field, _ in out]
    if len(set(names)) != len(names):  # a programming error
        raise ValueError(f"{cls.__name__}: an option name is used twice in {names}")
    return out


def _option(field: dataclasses.Field, hint: Any, extra: dict) -> Callable:
    meta = field.metadata
    flag = meta["flag"] or "--" + field.name.replace("_", "-")
    kwargs: dict[str, Any] = {"help": meta["help"], "metavar": meta["metavar"]}
    if hint is bool:
        kwargs["is_flag"] = True
    else:
        kwargs |= {"type": _click_type(hint, meta), "default": field.default, "show_default": field.default is not None}
    if field.default == ():  # a tuple of values: the option repeats
        kwargs |= {"multiple": True, "show_default": False}
    kwargs |= extra

    def decorate(func: Callable) -> Callable:
        for old in meta["aliases"]:
            func = renamed(old, flag, field.name, type=kwargs.get("type"), multiple=kwargs.get("multiple", False))(func)
        return click.option(flag, field.name, **kwargs)(func)

    return decorate


BASE_METAVAR = "PATH_OR_HUB_ID"  # a folder, a .safetensors file or a Hub id from the local cache


def base_option(help: str, *, required: bool = True) -> Callable:
    """--base, as every command that takes one names it."""
    return click.option("--base", "base", required=required, metavar=BASE_METAVAR, help=help)


_RENAMED = "surgeon.renamed"  # ctx.meta key: {dest: (old flag, new flag, value)} of the old spellings given


def renamed(old: str, new: str, dest: str, **kwargs: Any) -> Callable:
    """A hidden option OLD, the name option NEW (whose value the command takes as `dest`) had
    until this release: its value goes to `dest` as NEW's would; both at once is a usage error.
    `kwargs`: click keywords of OLD (its type, callback, ...), as NEW has them."""
    given = kwargs.pop("callback", None)

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if given is not None:
            value = given(ctx, param, value)
        if value is not None and value != ():  # not given: the new name or its default decides
            ctx.meta.setdefault(_RENAMED, {})[dest] = (old, new, value)
        return value

    def decorate(func: Callable) -> Callable:
        # a name of its own: click keys a value's source by name, and "--max-tokens" would be max_tokens
        name = f"old_{old.lstrip('-').replace('-', '_')}_for_{dest}"
        option = click.option(old, name, hidden=True, expose_value=False, default=None, callback=remember, **kwargs)
        return option(_taking_old_names(func))

    return decorate


def _taking_old_names(func: Callable) -> Callable:
    """FUNC, called with the values given under old names (`renamed`) as the new names'."""
    if getattr(func, "_takes_old_names", False):
        return func

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        for dest, (old, new, value) in ctx.meta.pop(_RENAMED, {}).items():
            if ctx.get_parameter_source(dest) not in (None, click.core.ParameterSource.DEFAULT):
                raise click.UsageError(f"{old} is the old name of {new}: give one of them", ctx)
            kwargs[dest] = value
        return func(*args, **kwargs)

    wrapper._takes_old_names = True  # type: ignore[attr-defined]
    return wrapper


def _click_type(hint: Any, meta: Mapping[str, Any]) -> Any:
    """The click type for a field's annotation: Literal -> Choice, numbers with their range."""
    hint = _without_none(hint)
    if meta["path"]:
        return PATH_TYPES[meta["path"]]
    if typing.get_origin(hint) is Literal:
        return click.Choice(typing.get_args(hint))
    low, high, below = meta["minimum"], meta["maximum"], meta["below"]
    if hint is int:
        return click.IntRange(low, high) if (low, high) != (None, None) else int
    if hint is float and below is not None:
        return click.FloatRange(low, below, max_open=True)
    if hint is float:
        return click.FloatRange(low, high) if (low, high) != (None, None) else float
    return str


def _without_none(hint: Any) -> Any:
    """X for an `X | None` annotation."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint
