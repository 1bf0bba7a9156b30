"""A name -> constructor table whose errors list what is allowed."""

import inspect
from collections.abc import Callable

# Flax Module constructor arguments that are not options.
_NOT_OPTIONS = ("parent", "name")


class Registry:
    """Constructors (classes, partials or functions) by name, built with checked keyword options."""

    def __init__(self, kind: str, entries: dict[str, Callable] | None = None):
        self.kind = kind
        self._entries: dict[str, Callable] = dict(entries or {})

    def register(self, name: str, constructor: Callable) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = constructor

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {self.names()}")
        return self._entries[name]

    def options(self, name: str) -> list[str]:
        """The keyword arguments `build(name, ...)` accepts."""
        parameters = inspect.signature(self.get(name)).parameters
        return sorted(p for p in parameters if p not in _NOT_OPTIONS)

    def build(self, key: str, /, **options):
        """Calls constructor `name` with `options`; unknown options are a ValueError.

        A Flax Module's `name` and `parent` may be passed too.
        """
        unknown = sorted(set(options) - set(self.options(key)) - set(_NOT_OPTIONS))
        if unknown:
            raise ValueError(
                f"{self.kind} {key!r} has no option(s) {unknown}; its options are"
                f" {self.options(key)}"
            )
        return self.get(key)(**options)
