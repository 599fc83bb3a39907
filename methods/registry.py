"""The method registry: `@register_method("name")`, `build_method(name, **options)`, `list_methods()`.

A method class is a `Distiller` subclass with a frozen dataclass `Options`; `build_method` validates the
options against it, so a typo fails with the valid names and the closest match instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from benchmark.errors import UserError
from methods.base import Distiller

_METHODS: dict[str, type[Distiller]] = {}

D = TypeVar("D", bound=type[Distiller])


def register_method(name: str) -> Callable[[D], D]:
    """Class decorator adding a `Distiller` subclass to the registry under `name`."""

    def add(cls: D) -> D:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        if not dataclasses.is_dataclass(cls.Options):
            raise TypeError(f"{cls.__name__}.Options must be a dataclass")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def _hint(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def method_class(name: str) -> type[Distiller]:
    """The registered class of `name`; an unknown name lists the valid ones and the close match."""
    _load_builtin()
    if name not in _METHODS:
        raise UserError(f"unknown method '{name}'.{_hint(name, list_methods())} "
                        f"Valid methods: {', '.join(list_methods())}.")
    return _METHODS[name]


def method_options(name: str, **options: Any) -> Any:
    """The validated `Options` instance of method `name` (defaults filled in)."""
    cls = method_class(name)
    own = list(vars(cls.Options).get("__annotations__", {}))
    fields = own + [f.name for f in dataclasses.fields(cls.Options) if f.name not in own]  # own options first
    for key in options:
        if key not in fields:
            raise UserError(f"method '{name}' has no option '{key}'.{_hint(key, fields)} "
                            f"Valid options: {', '.join(fields) or '(none)'}.")
    return cls.Options(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})


def build_method(name: str, **options: Any) -> Distiller:
    """A new, unbound instance of method `name` with `options` (see `Distiller.bind`)."""
    return method_class(name)(method_options(name, **options))


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    _load_builtin()
    return sorted(_METHODS)


def _load_builtin() -> None:
    """Import the built-in method modules once, so that their decorators run."""
    import methods.builtin  # noqa: F401
