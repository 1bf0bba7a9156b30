"""A name -> constructor table whose errors list what is allowed.

Models, encoders, losses, datasets, evaluators, optimizers and schedules are each one
`Registry`; user code adds to them with the decorator form (`@MODELS.register("name")`,
or the `register_*` functions of each package) and names them in a config.
"""

import functools
import inspect
from collections.abc import Callable

from jaxseg.errors import ConfigError

# Flax Module constructor arguments that are not options.
_NOT_OPTIONS = ("parent", "name")


class Registry:
    """Constructors (classes, partials or functions) by name, built with checked keyword options."""

    def __init__(self, kind: str, entries: dict[str, Callable] | None = None):
        self.kind = kind
        self._entries: dict[str, Callable] = dict(entries or {})

    def register(self, name: str, constructor: Callable | None = None):
        """Adds `constructor` under `name`; without it, a decorator that does (and returns
        what it decorates). A name already taken is a ConfigError."""
        if constructor is None:
            return lambda decorated: self.register(name, decorated)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ConfigError(
                f"{self.kind} {name!r} is already registered ({self._entries[name]!r});"
                " choose another name"
            )
        self._entries[name] = constructor
        return constructor

    def __contains__(self, name) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._entries[name]

    def options(self, name: str) -> list[str]:
        """The keyword arguments `build(name, ...)` accepts (those a partial fixes excluded:
        they are what makes the entry what it is, e.g. fcn8s's num_skips)."""
        return sorted(option_parameters(self.get(name)))

    def build(self, key: str, /, **options):
        """Calls constructor `name` with `options`; unknown options are a ValueError.

        A Flax Module's `name` and `parent` may be passed too.
        """
        unknown = sorted(set(options) - set(self.options(key)) - set(_NOT_OPTIONS))
        if unknown:
            raise ConfigError(
                f"{self.kind} {key!r} has no option(s) {unknown}; its options are"
                f" {self.options(key)}"
            )
        return self.get(key)(**options)


def option_parameters(constructor: Callable) -> dict[str, inspect.Parameter]:
    """{name: Parameter} of the options of a constructor, a partial's fixed keywords excluded."""
    fixed = set(constructor.keywords) if isinstance(constructor, functools.partial) else set()
    return {
        name: p
        for name, p in inspect.signature(constructor).parameters.items()
        if name not in _NOT_OPTIONS and name not in fixed and p.kind is not p.VAR_KEYWORD
    }
