"""Command-line options built from the models that define them.

A model's fields (their types, defaults and descriptions) become Typer options, and
`with_options` grafts groups of them onto a command, which receives each group as one
built value. So an option is declared once, where it means something (for example
`WorkerOptions`), and every command that takes it stays in step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from pydantic import BaseModel

#: (parameter name, Annotated type with its typer.Option, default).
Param = tuple[str, Any, Any]


@dataclass(frozen=True)
class OptionGroup:
    """Options a command receives together, built into one value by `build`."""

    params: tuple[Param, ...]
    build: Callable[[dict[str, Any]], Any]


def model_params(
    model: type[BaseModel],
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    short: Mapping[str, str] | None = None,
    panel: str | None = None,
    optional: bool = False,
) -> tuple[Param, ...]:
    """Typer options for a model's fields (`only` these, or all but `exclude`), with the
    field's description as help (Typer shows the default). With `optional`, every option
    defaults to None (unset), so the model's own default applies."""
    names = list(only) if only is not None else list(model.model_fields)
    skip = set(exclude)
    out: list[Param] = []
    for name in names:
        if name in skip:
            continue
        info = model.model_fields[name]
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        decls = [flag, *([short[name]] if short and name in short else [])]
        help_text = info.description or ""
        annotation: Any = info.annotation
        if optional:
            annotation = annotation | None
        default = None if optional else (... if info.is_required() else info.default)
        option = typer.Option(*decls, help=help_text, rich_help_panel=panel)
        out.append((name, Annotated[annotation, option], default))
    return tuple(out)


def with_options(**groups: OptionGroup) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Graft option groups onto a Typer command: the command declares a parameter per
    group name (e.g. `worker: WorkerOptions`) and receives the group's built value."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        own = [p for p in sig.parameters.values() if p.name not in groups]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
            for group in groups.values()
            for name, ann, default in group.params
        ]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            built = {
                key: group.build({name: kwargs.pop(name) for name, _, _ in group.params})
                for key, group in groups.items()
            }
            return fn(**built, **kwargs)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return wrapper

    return decorate
