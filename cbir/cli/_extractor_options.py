"""The extractor options of ``cbir index``, made from the parameters the extractors declare.

Typer reads a command's options from its signature, so :func:`with_extractor_options`
writes one: the command's own parameters, with its ``extractor_params``
parameter replaced by a named option for each declared parameter marked
``option`` (``--backbone``, ``--grey``...), grouped by extractor in the help,
and ``--param NAME=VALUE`` for every parameter, named option or not. The
command receives ``extractor_params``: the values given, typed by their
declarations. Adding a parameter to an extractor's ``parameters`` is all it
takes to offer it here.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Any, Callable, Optional

import typer

from cbir.errors import UsageError
from cbir.features.base import Param, declared_parameters, extractor_class

#: Prefix of the generated keyword arguments, so they never clash with the command's own.
_PREFIX = "extractor_option__"
_PARAM = f"{_PREFIX}_param"
_TYPES = {int: int, float: float, str: str, list: str, bool: bool}


def with_extractor_options(command: Callable) -> Callable:
    """``command`` with generated extractor options in place of its ``extractor_params`` parameter."""
    declared = declared_parameters()
    named = {key: [(owner, p) for owner, p in owners if p.option] for key, owners in declared.items()}
    named = {key: owners for key, owners in named.items() if owners}
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "extractor_params"]
    _refuse_clashes(own, named)
    generated = [_param_option(declared)] + [_named_option(key, owners) for key, owners in named.items()]
    at = list(signature.parameters).index("extractor_params")
    parameters = own[:at] + generated + own[at:]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {key: kwargs.pop(_PREFIX + key) for key in named}
        kwargs["extractor_params"] = _values(given, kwargs.pop(_PARAM), named, declared)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def _values(given: dict[str, Any], pairs: list[str] | None, named: dict, declared: dict) -> dict[str, Any]:
    """What the command line set: named options (typed by Typer, lists and flags here) and ``--param``."""
    values = {}
    for key, value in given.items():
        if value is None:
            continue
        param = named[key][0][1]
        if param.flag:
            value = param.flag[1] if value else None
        elif param.type is list:
            value = param.parse(value, param.option_name)
        if value is not None:
            values[key] = value
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        key = name.strip().replace("-", "_")
        if not sep or not key:
            raise UsageError(f"--param takes NAME=VALUE (e.g. --param batch_size=16), got {pair!r}")
        if key not in declared:
            raise UsageError(f"--param {key}: no extractor has this parameter; they are: {', '.join(sorted(declared))}")
        if key in values:
            raise UsageError(f"{key} is given twice (--param {key}=... and {named[key][0][1].option_name} or another --param)")
        values[key] = declared[key][0][1].parse(text, f"--param {key}")
    return values


def _refuse_clashes(own: list[inspect.Parameter], named: dict) -> None:
    """A declared option named like one of the command's own (``--batch-size``) would shadow it: a bug."""
    taken = set()
    for p in own:
        info = next((m for m in getattr(p.annotation, "__metadata__", ()) if isinstance(m, typer.models.ParameterInfo)), None)
        taken.update(d for decl in (getattr(info, "param_decls", None) or ()) for d in decl.split("/"))
    for key, owners in named.items():
        if owners[0][1].option_name in taken:
            raise TypeError(f"extractor parameter {key!r} would be {owners[0][1].option_name}, an option the command has already")


def _named_option(key: str, owners: list[tuple[str, Param]]) -> inspect.Parameter:
    param = owners[0][1]
    if param.flag:
        kind, decls = bool, (param.flag[0],)
    elif param.type is bool:
        kind, decls = bool, (f"{param.option_name}/--no-{param.option_name[2:]}",)
    else:
        kind, decls = _TYPES[param.type], (param.option_name,)
    names = [owner for owner, _ in owners]
    titles = [extractor_class(owner).title or owner for owner in names]
    option = typer.Option(
        *decls,
        help=_help(owners),
        show_default=False,
        metavar=_metavar(param),
        rich_help_panel=f"{' and '.join(titles)} (--extractor {' or '.join(names)})",
    )
    return _keyword(_PREFIX + key, Annotated[Optional[kind], option])


def _param_option(declared: dict) -> inspect.Parameter:
    unnamed = {}
    for key, owners in declared.items():
        for owner, param in owners:
            if not param.option:
                unnamed.setdefault(owner, []).append(key)
    listed = "; ".join(f"{owner}: {', '.join(keys)}" for owner, keys in unnamed.items())
    option = typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="Set any extractor parameter, named option or not; repeatable (e.g. --param batch_size=16). "
        f"Those without an option of their own: {listed}.",
        show_default=False,
    )
    return _keyword(_PARAM, Annotated[Optional[list[str]], option])


def _keyword(name: str, annotation: Any) -> inspect.Parameter:
    # Typer calls commands with keywords only; after the command's own options, all defaulted.
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)


def _help(owners: list[tuple[str, Param]]) -> str:
    """The declared help (each extractor's, where they differ), its choices and its default(s)."""
    helps = list(dict.fromkeys(param.help for _, param in owners))
    text = helps[0] if len(helps) == 1 else " ".join(f"{owner}: {param.help}" for owner, param in owners)
    param = owners[0][1]
    if param.flag:
        return text
    if param.choices and not param.path:  # a path's help says which words it takes instead
        words = [str(c) for c in param.choices]
        text += f" One of: {', '.join(words[:-1])} or {words[-1]}."
    defaults = list(dict.fromkeys(_shown(p.default) for _, p in owners))
    if len(defaults) == 1:
        return f"{text} (default: {defaults[0]})"
    return f"{text} (default: " + ", ".join(f"{_shown(p.default)} for {owner}" for owner, p in owners) + ")"


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _metavar(param: Param) -> str | None:
    if param.type is list:
        return "N,N,..."
    return "FILE|WORD" if param.path else None
