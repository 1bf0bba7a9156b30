"""Command-line configs: `--config FILE[:ARG]` and `--config.a.b=value` overrides.

An override is typed by the key it sets (an integer key takes "5", not "2.5" or "abc"; a
tuple takes "64,64" or "(64, 64)"; a bool "true"/"false"), and a key the config does not
have is an error listing the keys allowed there. Keys that choose what an open group holds
(`jaxseg.config.SELECTORS`: model.name, model.encoder, data.name, loss.terms) are applied
first, and the group is rebuilt with the new choice's defaults before the other overrides:
`--config.data.name=folder --config.data.options.root=DIR` works without a config file.
`config.imports` is applied and imported before everything else, so that user code can
register what the other keys name.
"""

import ast
import math

import ml_collections

from jaxseg.config import (
    SELECTORS,
    data_config,
    import_modules,
    load_config_file,
    loss_options_config,
    model_config,
)
from jaxseg.errors import ConfigError

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def split_config_args(argv: list[str], flag: str = "config"):
    """(config spec or None, [(key, raw value or None)], the other arguments) of a command
    line: `--config FILE`, `--config=FILE`, `--config.KEY=VALUE` and `--config.KEY VALUE`."""
    spec, overrides, rest = None, [], [argv[0]]
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            rest.append(arg)
            rest.extend(args)
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or (name != flag and not name.startswith(f"{flag}.")):
            rest.append(arg)
            continue
        if not has_value:
            value = next(args, None)
            if value is not None and value.startswith("--"):  # a flag: no value was given
                rest.append(value)  # (a value starting with "-" is a negative number)
                value = None
        if name == flag:
            if not value:
                raise ConfigError(f"--{flag} needs a config file: --{flag} configs/default.py")
            spec = value
        else:
            overrides.append((name[len(flag) + 1 :], value))
    return spec, overrides, rest


def load_config(spec: str, overrides=(), flag: str = "config") -> ml_collections.ConfigDict:
    """The config file `spec` ("path.py" or "path.py:argument") with `overrides` applied."""
    config = load_config_file(spec)
    apply_overrides(config, overrides, flag)
    return config


def apply_overrides(config, overrides, flag: str = "config") -> None:
    """Applies [(key, raw value)]: "imports", then the selectors, then the rest in order."""
    overrides = list(overrides)
    first = [o for o in overrides if o[0] == "imports"]
    selectors = sorted(
        (o for o in overrides if o[0] in SELECTORS), key=lambda o: list(SELECTORS).index(o[0])
    )
    for key, raw in first:
        _set(config, key, raw, flag)
    import_modules(config)
    for key, raw in selectors:
        _set(config, key, raw, flag)
        _rebuild_group(config, key)
    for key, raw in overrides:
        if key != "imports" and key not in SELECTORS:
            _set(config, key, raw, flag)


def _rebuild_group(config, selector: str) -> None:
    """The open group a changed selector chooses, at the new choice's defaults."""
    with config.unlocked():
        if selector == "model.name":
            config.model = model_config(config.model.name)
        elif selector == "model.encoder":
            fields = {k: v for k, v in config.model.items() if k not in ("name", "encoder_options")}
            config.model = model_config(config.model.name, **fields)
        elif selector == "data.name":
            config.data.options = data_config(config.data.name)
        elif selector == "loss.terms":
            kept = {
                name: options.to_dict()
                for name, options in config.loss.options.items()
                if name in _term_names(config.loss.terms)
            }
            config.loss.options = loss_options_config(config.loss.terms, **kept)


def _term_names(terms: str) -> list[str]:
    from jaxseg.config import parse_loss_terms

    return [name for name, _ in parse_loss_terms(terms)]


def _set(config, key: str, raw, flag: str) -> None:
    node, path = config, []
    parts = key.split(".")
    for part in parts[:-1]:
        node = _child(node, part, path, key, flag)
        path.append(part)
    last = parts[-1]
    _child(node, last, path, key, flag)  # checks the key exists
    current = node[last]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"--{flag}.{key} is a group of keys ({sorted(current.keys())}); set one of them,"
            f" e.g. --{flag}.{key}.{sorted(current.keys())[0] if current else 'KEY'}=..."
        )
    kind = node.get_ref(last).get_type() if current is None else type(current)
    value = _parse(raw, kind, current, f"--{flag}.{key}")
    try:
        node[last] = value
    except TypeError as e:
        raise ConfigError(f"--{flag}.{key}={raw!r}: {e}") from e


def _child(node, part: str, path: list[str], key: str, flag: str):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        allowed = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        where = ".".join(path) or "the config"
        raise ConfigError(
            f"unknown option --{flag}.{key}: {where} has no key {part!r};"
            f" allowed keys there: {allowed}"
        )
    return node[part]


def _parse(raw, kind, current, name: str):
    """`raw` (a command-line string, None for a bare flag) as a value of type `kind`."""
    if raw is None:
        if kind is bool:
            return True
        raise ConfigError(f"{name} needs a value: {name}=VALUE")
    if kind is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if kind is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name}={raw!r} is not a finite number")
        return value
    if kind in (tuple, list):
        return _parse_sequence(raw, current, name)
    if kind is str:
        return raw
    try:  # a placeholder of unknown type: a Python literal, else the string
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _parse_sequence(raw: str, current, name: str) -> tuple:
    """ "64,64", "(64, 64)", "[a, b]" or "" as a tuple, its items typed like the current ones."""
    text = raw.strip()
    if text in ("", "()", "[]"):
        return ()
    try:
        value = ast.literal_eval(text)
        items = tuple(value) if isinstance(value, list | tuple) else (value,)
    except (ValueError, SyntaxError):
        items = tuple(item.strip() for item in text.strip("()[]").split(","))
    like = type(current[0]) if current else None
    if like in (int, float, bool):
        return tuple(_parse(str(item), like, None, f"{name} item") for item in items)
    if like is str:
        return tuple(str(item) for item in items)
    return items
