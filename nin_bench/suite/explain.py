"""Where each effective setting of a suite came from (`list --explain`): the precedence of `suite.config`, told.

The values are those `load_config` + `resolve_protocol` give (what `run` would run); the origin of each is the
highest layer that sets it, lowest first: "default" < "protocol NAME" (a protocol file's plain keys) <
"protocol NAME: cpu" (its device block) < "suite" < "suite: cpu" < "--quick" (a size it shrank) <
"protocol NAME: quick" < "suite: quick" < "--set". No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nin_bench.suite.config import (
    SuiteConfig,
    load_config,
    parse_set,
    quick_shrink,
    resolve_protocol,
)
from nin_bench.suite.files import DEVICE_BLOCKS, protocol_files, read_yaml

__all__ = ["Explained", "Setting", "explain"]

_SECTIONS = ("model", "data", "timing", "train", "report")  # settings listed one dotted key per field
_NOT_SETTINGS = ("description", *DEVICE_BLOCKS, "quick", "protocol_notes")  # blocks and prose, not settings


@dataclass(frozen=True)
class Setting:
    """One effective setting: dotted key, value, and the layer it came from (e.g. "protocol cpu_short: cpu")."""

    key: str
    value: Any
    origin: str


@dataclass(frozen=True)
class Explained:
    """A resolved suite (as `resolve_protocol` returns it) and the origin of each of its settings."""

    config: SuiteConfig
    protocol: str
    device: str
    settings: list[Setting]


def flat_settings(mapping: dict[str, Any]) -> dict[str, Any]:
    """A suite mapping (raw YAML or a dump) as dotted key -> value: "train.epochs", "seeds", "grid", ...;
    its override blocks, notes and description left out."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in _NOT_SETTINGS:
            continue
        if key in _SECTIONS and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def explain(path: Path, sets: list[str] = (), *, cuda: bool, quick: bool = False, full: bool = False,
            seen_by: str = "torch") -> Explained:
    """Resolve a suite as `run` would and say where each setting came from.

    Args:
        path: the suite YAML.
        sets: `key=value` overrides, as for `load_config`.
        cuda, quick, full, seen_by: as for `resolve_protocol`.

    Returns:
        The resolved config, protocol, device and its settings in schema order, each with its origin.
    """
    cfg = load_config(path, sets)
    resolved, protocol, device = resolve_protocol(cfg, cuda=cuda, quick=quick, full=full, sets=sets,
                                                  seen_by=seen_by)
    block = "gpu" if device == "cuda" else None if full else "cpu"
    shrunk = _quick_changes(cfg, cuda, full, sets, seen_by) if quick else {}
    layers = _layers(path, [parse_set(s) for s in sets], block, quick, shrunk)
    settings = []
    for key, value in flat_settings(resolved.model_dump(mode="json")).items():
        origin = next((name for name, values in reversed(layers) if _sets(values, key)), "default")
        if key == "device" and cfg.device == "auto":
            origin += ": auto, resolved here"
        settings.append(Setting(key, value, origin))
    return Explained(resolved, protocol, device, settings)


def _quick_changes(cfg: SuiteConfig, cuda: bool, full: bool, sets: list[str], seen_by: str) -> dict[str, Any]:
    """The sizes --quick's shrink changed (a suite's own smaller value stays the suite's)."""
    before, _, _ = resolve_protocol(cfg, cuda=cuda, full=full, sets=sets, seen_by=seen_by)
    now = flat_settings(before.model_dump())
    return {k: v for k, v in quick_shrink(before).items() if now[k] != v}


def _layers(path: Path, pairs: list[tuple[str, Any]], block: str | None, quick: bool,
            shrunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(origin, dotted key -> value) of every layer that may set something, lowest first (see the module doc)."""
    raw = read_yaml(path)
    raw.update({k: v for k, v in pairs if k == "protocols"})
    protocols = protocol_files(raw, path.parent, SuiteConfig.model_fields)
    on_blocks = {b: {k.partition(".")[2]: v for k, v in pairs if k.startswith(f"{b}.")} for b in (block, "quick")}
    layers = [(f"protocol {name}", flat_settings(p)) for name, p in protocols]
    if block:
        layers += [(f"protocol {name}: {block}", p.get(block) or {}) for name, p in protocols]
    layers += [("suite", flat_settings(raw))]
    if block:
        layers += [(f"suite: {block}", raw.get(block) or {}), ("--set", on_blocks[block])]
    if quick:
        layers += [("--quick", shrunk)]
        layers += [(f"protocol {name}: quick", p.get("quick") or {}) for name, p in protocols]
        layers += [("suite: quick", raw.get("quick") or {}), ("--set", on_blocks["quick"])]
    head = (*DEVICE_BLOCKS, "quick")
    return layers + [("--set", {k: v for k, v in pairs if k.split(".")[0] not in head})]


def _sets(values: dict[str, Any], key: str) -> bool:
    """Whether a layer sets `key`: itself, a part of it ("report.baseline.x"), or a whole it belongs to."""
    return any(k == key or k.startswith(key + ".") or key.startswith(k + ".") for k in values)
