"""Suite files as text: YAML with YAML 1.2's floats, and the protocol files a suite names, merged under it.

A suite may name protocol files (`protocols: [paper, cpu_short]`): built-in ones in `nin_bench/suite/protocols/`, or
its own as paths ending in .yaml (relative to the suite file). The suite composes last: what it writes itself,
plainly or in its own `cpu:`/`gpu:` block, beats every protocol file (`with_protocols`). No torch and no schema
here: `nin_bench.suite.config` validates what these functions return.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nin_bench.errors import ConfigError

# Keys a protocol file may not set: they say what a suite is, not how it is run.
SUITE_ONLY = ("name", "description", "grid", "variants", "protocols")
# The per-device override blocks (dotted key -> value); the one used is picked at run time (`resolve_protocol`).
DEVICE_BLOCKS = ("cpu", "gpu")


class _Loader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2's floats as well: YAML 1.1 needs a dot and a signed exponent, so it
    reads `5e-4`, `1e6` or `1.5E3` as strings. Ints (`1`, `-3`) stay ints: the int resolver is tried first."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 floats (see `_Loader`); the one YAML reader of suites, protocols and --set."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


def _parse_mapping(text: str, where: str) -> dict[str, Any]:
    """Parse a YAML file's text into a mapping; `where` names the file in every error."""
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"invalid YAML in {where}{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys (name, grid, ...), "
                          f"got {type(raw).__name__}")
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every file or syntax problem into a ConfigError."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc.__class__.__name__}: {exc}") from None
    return _parse_mapping(text, str(path))


def builtin_protocols() -> list[str]:
    """Names of the protocol files shipped in `nin_bench/suite/protocols/` (e.g. "cpu_short", "paper")."""
    folder = resources.files("nin_bench.suite") / "protocols"
    return sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))


def read_protocol(entry: str, base: Path | None, allowed: Iterable[str]) -> dict[str, Any]:
    """One entry of a suite's `protocols` list, read and checked.

    Args:
        entry: a built-in protocol's name ("paper"), or a path ending in .yaml/.yml (a user's own protocol file).
        base: the folder a relative path is taken from (the suite file's); None: the working directory.
        allowed: the suite schema's top-level keys (those a protocol may set, but for name, grid, ...).

    Returns:
        The protocol's raw mapping.

    Raises:
        ConfigError: unknown name (lists the built-in ones), unreadable or invalid file, or a key a protocol
            may not set (name, grid, protocols) or that the schema does not know.
    """
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"protocols: each entry must be a protocol name or a .yaml path, got {entry!r}")
    if entry.endswith((".yaml", ".yml")):
        path = Path(entry).expanduser()
        raw = read_yaml(path if path.is_absolute() or base is None else base / path)
    elif entry in builtin_protocols():
        where = f"built-in protocol {entry!r}"
        raw = _parse_mapping((resources.files("nin_bench.suite") / "protocols" / f"{entry}.yaml").read_text(), where)
    else:
        raise ConfigError(f"protocols: unknown protocol {entry!r}; built-in: {', '.join(builtin_protocols())} "
                          f"(or a path to your own file ending in .yaml)")
    allowed = [k for k in allowed if k not in SUITE_ONLY]
    for key in raw:
        if key not in allowed:
            why = ("a protocol says how a suite is run, not what it is" if key in SUITE_ONLY else
                   f"allowed: {', '.join(allowed)}")
            raise ConfigError(f"protocol {entry!r}: key {key!r} is not allowed in a protocol file ({why})")
    return raw


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, as a new mapping: mappings merge key by key (so do the dotted-key blocks cpu, gpu,
    quick and protocol_notes); lists and scalars from `top` replace those of `base`."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else copy.deepcopy(value)
    return out


def protocol_files(raw: dict[str, Any], base: Path | None, allowed: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """The protocol files a suite names, read and checked, in the order listed.

    Args:
        raw: a suite's raw mapping (its `protocols` list is read).
        base: the suite file's folder, for protocol paths (see `read_protocol`).
        allowed: the suite schema's top-level keys.

    Returns:
        (entry as written, e.g. "cpu_short" or "mine.yaml"; its raw mapping) for each protocol.
    """
    names = raw.get("protocols") or []
    if not isinstance(names, list):
        raise ConfigError(f"protocols: expected a list of protocol names or .yaml paths, got {names!r}")
    return [(entry, read_protocol(entry, base, allowed)) for entry in names]


def writes_key(raw: dict[str, Any], key: str) -> bool:
    """Whether a raw mapping sets the dotted `key` itself ("train.epochs": `train: {epochs: ...}`; "seeds")."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def with_protocols(raw: dict[str, Any], base: Path | None, allowed: Iterable[str]) -> dict[str, Any]:
    """The suite mapping with its `protocols` merged under it. A suite without `protocols` comes back unchanged.

    The precedence, lowest first: the protocols' plain keys (each over the previous, in the order listed) <
    their device blocks (`cpu:`, `gpu:`) < the suite's own plain keys < the suite's own device blocks. So the
    merged device blocks (`deep_merge`: key by key, the suite's over the protocols') drop each protocol entry
    whose key the suite itself sets: a value written in the suite is never replaced by a protocol file.
    `quick:` and `protocol_notes:` merge key by key, the suite's on top.

    Args:
        raw: a suite's raw mapping.
        base: the suite file's folder, for protocol paths (see `read_protocol`).
        allowed: the suite schema's top-level keys.
    """
    protocols = protocol_files(raw, base, allowed)
    if not protocols:
        return raw
    merged: dict[str, Any] = {}
    for _, protocol in protocols:
        merged = deep_merge(merged, protocol)
    out = deep_merge(merged, raw)
    for block in DEVICE_BLOCKS:
        ours = raw.get(block)
        if isinstance(out.get(block), dict):
            out[block] = {k: v for k, v in out[block].items()
                          if (isinstance(ours, dict) and k in ours) or not writes_key(raw, k)}
    return out
