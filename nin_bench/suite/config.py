"""Typed, frozen suite configuration: defaults live here, YAML and `--set key=value` override them.

Precedence, lowest first (Hydra's rule: the primary config composes last): the schema's defaults < the protocol
files' plain keys, in the order listed < their `cpu:`/`gpu:` block for the device used (none for --full) < the
suite file's own plain keys < its own `cpu:`/`gpu:` block < --quick (`quick_shrink`, then the `quick:` blocks) <
`--set`. The protocol files are merged under the suite by `suite.files.with_protocols`, the blocks applied by
`resolve_protocol`; `suite.explain` says, for each setting, which of these it came from. YAML is read with YAML
1.2's floats (`5e-4` is a number, not a string: `suite.files.load_yaml`). Every user mistake (unknown key, wrong
type, value out of range, bad YAML, unreadable file) becomes one `ConfigError` whose message names the key path,
the bad value and what is allowed; the CLI turns it into exit code 2. No torch import here, so `list` and the
report stay light.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nin_bench.errors import ConfigError
from nin_bench.store.schema import STAGES
from nin_bench.suite import presets
from nin_bench.suite.files import load_yaml, read_yaml, with_protocols
from nin_bench.suite.machine import resolve_device

__all__ = ["SuiteConfig", "load_config", "quick_shrink", "resolve_protocol", "validate"]

# The allowed names come from `nin_bench.suite.presets`; these views keep their old names.
PRESETS = tuple(sorted(presets.REGISTRY))
DATASETS = tuple(presets.DATASETS)
# Literals built from the registries (pydantic's error then lists the allowed values).
PresetName = Literal[PRESETS]  # type: ignore[valid-type]
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
HeadName = Literal[presets.HEADS]  # type: ignore[valid-type]
InitName = Literal[presets.INITS]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelSettings(_Section):
    """Architecture axes passed to `build_model` (see its docstring for their meaning)."""

    preset: PresetName = "nin_cifar"
    n_1x1: int = Field(2, ge=0, le=3)
    head: HeadName = "gap"
    dropout: float = Field(0.5, ge=0.0, lt=1.0)  # p of the dropout between blocks (and, by default, in the FC head)
    # p of the dropout inside the FC head; None: the same as `dropout` (the behaviour before this key existed, so
    # older suites and results keep their meaning). The GAP head has no dropout layer: its head dropout is 0.
    head_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    width: float = Field(1.0, gt=0.0, le=8.0)
    batchnorm: bool = False
    fc_hidden: list[int] | None = None
    init: InitName = "kaiming"

    @field_validator("fc_hidden")
    @classmethod
    def _positive_hidden(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(h < 1 for h in v):
            raise ValueError("every fc_hidden entry must be a positive integer")
        return v

    @property
    def resolved_head_dropout(self) -> float:
        """The p of the head's dropout layers as built: 0.0 for the GAP head (it has none), else `head_dropout`,
        or `dropout` when that is None."""
        if self.head == "gap":
            return 0.0
        return self.dropout if self.head_dropout is None else self.head_dropout


class DataSettings(_Section):
    """Which data set, at which input size, found where."""

    dataset: DatasetName = "cifar10"
    input_size: int | None = Field(None, ge=8, le=1024)  # None: the data set's native size
    root: str | None = None  # None: env NIN_BENCH_DATA, then the user cache dir
    download: bool = False
    path: str | None = None  # imagefolder only

    @model_validator(mode="after")
    def _imagefolder_needs_path(self) -> "DataSettings":
        if self.dataset == "imagefolder" and not self.path:
            raise ValueError("dataset 'imagefolder' needs data.path (a folder with train/<class>/ and test/<class>/)")
        return self


class TimingSettings(_Section):
    """Throughput sweep: every mode x batch size x dtype x channels_last x compile."""

    modes: list[Literal["forward", "train_step"]] = ["forward", "train_step"]
    batch_sizes: list[int] = [1, 32, 128]
    reference_batch_size: int = 128  # the batch the summary and report quote
    dtypes: list[Literal["fp32", "bf16", "fp16"]] = ["fp32"]
    channels_last: list[bool] = [True]
    compile: list[bool] = [False]
    # compiled rows run at these batch sizes only; each pays a full compile. None: the reference batch size
    # when eager rows run too (compile: [false, true]), every batch size when only compiled rows do
    compile_batch_sizes: list[int] | None = None
    warmup: int = Field(5, ge=0)  # untimed iterations per variant and setting, before the rounds
    repeats: int = Field(20, ge=3)  # timed iterations per row, split evenly over its rounds' windows
    # the variants of a unit are timed side by side in this many rounds (one window of repeats / rounds
    # iterations each), each in an order shuffled from round_seed, so what the machine does during the sweep
    # lands on all of them alike (STYLE 9)
    rounds: int = Field(5, ge=1)  # unless written, at most `repeats` (5 rounds need 5 timed iterations)
    # a round's window times more iterations than repeats / rounds where fewer would last less than this: a
    # 1 ms forward timed 10 times is one scheduler hiccup away from noise (torch.utils.benchmark's
    # blocked_autorange sizes its blocks by time too)
    min_window_ms: float = Field(50.0, ge=0.0)
    round_seed: int = 0
    # per-layer time (torch.profiler) of every eager dtype x layout, at these batch sizes (None: the reference
    # batch size), measured right after the sweep's forward row of the same setting (same machine state)
    layer_timing: bool = True
    layer_timing_batch_sizes: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_rounds(cls, data: Any) -> Any:
        """A config that does not write `rounds` times as many rounds as its repeats fill, at most 5."""
        if isinstance(data, dict) and "rounds" not in data and isinstance(data.get("repeats"), int):
            return {**data, "rounds": max(1, min(5, data["repeats"]))}
        return data

    @model_validator(mode="after")
    def _check(self) -> "TimingSettings":
        for key in ("modes", "batch_sizes", "dtypes", "channels_last", "compile"):
            if not getattr(self, key):
                raise ValueError(f"timing.{key} must not be empty")
        if any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"timing.batch_sizes must be positive integers, got {self.batch_sizes}")
        for key in ("compile_batch_sizes", "layer_timing_batch_sizes"):
            extra = [b for b in getattr(self, key) or [] if b not in self.batch_sizes]
            if extra:
                raise ValueError(f"timing.{key} {getattr(self, key)} must be among timing.batch_sizes "
                                 f"{self.batch_sizes} (each is compared with the sweep's row at that batch)")
        if self.rounds > self.repeats:
            raise ValueError(f"timing.rounds {self.rounds} must not exceed timing.repeats {self.repeats} (the "
                             "repeats are split over the rounds: each round times at least one iteration)")
        if self.reference_batch_size not in self.batch_sizes:
            raise ValueError(
                f"timing.reference_batch_size {self.reference_batch_size} must be one of "
                f"timing.batch_sizes {self.batch_sizes}"
            )
        return self


class TrainSettings(_Section):
    """The training protocol. The defaults are the paper protocol (`protocols/paper.yaml` names it and adds its
    three seeds), written here once: SGD with Nesterov momentum 0.9, batch 128, lr 0.05 with 2 warm-up epochs,
    /10 at 50 % and 75 % of 100 epochs, weight decay 5e-4, train.augment's default (crop + flip on CIFAR-10).
    Other protocols (cpu_short, d2l's) write only where they differ; faster schedules are offered."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0.0)  # peak learning rate
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["onecycle", "cosine", "step"] = "step"
    step_milestones: list[float] = [0.5, 0.75]  # fractions of the epochs: the paper's lr / 10 twice
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = Field(2.0, ge=0.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    augment: Literal["auto", "none", "flip", "crop", "crop_flip"] = "auto"
    subset: int | None = Field(None, ge=10)  # training images used (after the validation hold-out)
    val_size: int = Field(5000, ge=0)
    # test images scored: the first N of the test set (None: all of it); a smoke run's cut, as Lightning's
    # limit_test_batches: the records' test_size and the report's protocol line say how many were scored
    test_subset: int | None = Field(None, ge=10)
    eval_batch_size: int = Field(1000, ge=1)
    # eval-mode accuracy on this many training images, evaluated with the validation set (`train_eval_acc`): a
    # fixed sample (its own generator, the same images for every variant and seed), so train vs validation
    # accuracy shows overfitting; 0 turns it off. It never changes the training trajectory.
    train_eval_size: int = Field(5000, ge=0)
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: bool = True
    compile: bool = False
    # bit-reproducible CUDA training (deterministic cuDNN/cuBLAS algorithms, no autotuning); the CPU always is
    deterministic: bool = False
    time_to_acc: list[float] = [0.8, 0.85, 0.9]
    eval_every: int = Field(1, ge=1)

    @field_validator("step_milestones", "time_to_acc")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < x < 1.0 for x in v):
            raise ValueError(f"entries must lie strictly between 0 and 1, got {v}")
        return v


class Interaction(_Section):
    """A declared interaction (`report.interactions`): the difference of two effects, each a pair of variants
    (first − second), paired by seed: (a[0] − a[1]) − (b[0] − b[1]). For suites whose rows are not a full grid,
    where the factorial analysis finds no interaction (head.yaml: the paper's rows give dropout's effect on the
    GAP NiN, between blocks, and on the FC head, inside it). Each variant is given as `report.baseline` gives
    one: dotted grid keys -> value, the first matching variant of each data set."""

    name: str = Field(min_length=1)
    a: list[dict[str, Any]] = Field(min_length=2, max_length=2)
    b: list[dict[str, Any]] = Field(min_length=2, max_length=2)


class ReportSettings(_Section):
    """How the report compares variants."""

    baseline: dict[str, Any] = {}  # dotted grid keys -> value; empty: the first grid point
    # a difference of test accuracy smaller than this (percentage points) counts as none: "buys nothing" is said
    # only when TOST puts the difference's 90 % CI inside ±margin; 1 pp is about the seed-to-seed SD
    # of the committed CPU runs (0.1-1.6 pp)
    equivalence_margin_pp: float = Field(1.0, gt=0)
    interactions: list[Interaction] = []


class AutoSeeds(_Section):
    """`seeds: {auto: ...}`: train seeds 0..min-1 of every variant seed-major, then one more seed of every variant
    at a time while a declared comparison is unresolved, up to `max` seeds (`nin_bench.run.auto_seeds`).

    target: which comparisons must be resolved: "baseline" (every variant against its data set's
    `report.baseline`; resolved when the paired 95 % CI excludes 0 or TOST shows equivalence within
    `report.equivalence_margin_pp`) or "pairs" (every pair of variants within a data set, as the report's
    pairwise table calls them: Holm-adjusted p < 0.05, or TOST equivalence).
    """

    min: int = Field(3, ge=2)  # two paired seeds are the fewest that give a CI
    max: int = Field(8, ge=2, le=1000)
    target: Literal["baseline", "pairs"] = "baseline"

    @model_validator(mode="after")
    def _order(self) -> AutoSeeds:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self


class SeedsAuto(_Section):
    """The mapping form of `seeds: auto` (see `AutoSeeds`)."""

    auto: AutoSeeds = AutoSeeds()


_SEEDS_SHAPES = "a non-empty list of distinct non-negative integers, e.g. [0, 1, 2], or auto / {auto: {min: 3, max: 8, target: baseline|pairs}}"


class SuiteConfig(_Section):
    """One ablation suite: base settings, a grid over dotted keys and/or an explicit variants list (at least one of
    them), seeds, stages, protocol overrides."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    protocols: list[str] = []  # protocol files merged under this suite, in order (see `with_protocols`)
    seeds: list[int] | SeedsAuto = [0]  # a list, or auto (see `AutoSeeds`)
    stages: list[str] = list(STAGES)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)  # torch's intra-op threads for the whole run (timing and training); None: all cores
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    grid: dict[str, list[Any]] = {}
    # explicit variants, each a mapping of dotted overrides (e.g. {model.head: fc, model.head_dropout: 0.0}),
    # crossed with the grid (the list varies fastest): for rows that are not a full product of axes
    variants: list[dict[str, Any]] = []
    timing: TimingSettings = TimingSettings()
    train: TrainSettings = TrainSettings()
    report: ReportSettings = ReportSettings()
    cpu: dict[str, Any] = {}  # dotted overrides for a machine without CUDA (unless --full)
    gpu: dict[str, Any] = {}  # dotted overrides when training on CUDA
    quick: dict[str, Any] = {}  # dotted overrides for --quick, on top of the built-in smoke settings
    protocol_notes: dict[Literal["cpu", "gpu", "full", "quick"], str] = {}  # why a protocol is what it is (report)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        """Route the two shapes by hand, so a mistake gets one line naming the key, not a union's two errors."""
        if v == "auto":
            v = {"auto": {}}
        if isinstance(v, SeedsAuto):
            return v
        if isinstance(v, dict):
            try:
                return SeedsAuto.model_validate(v)
            except ValidationError as err:
                e = err.errors()[0]
                where = ".".join(str(p) for p in e["loc"])
                if e["type"] == "extra_forbidden":
                    raise ValueError(f"unknown key {where!r}; allowed here: "
                                     f"{', '.join(SeedsAuto.model_fields if '.' not in where else AutoSeeds.model_fields)}"
                                     ) from None
                got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
                raise ValueError(f"{where}: {e['msg'].removeprefix('Value error, ')}{got}") from None
        ok = (isinstance(v, list) and v and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v)
              and len(set(v)) == len(v))
        if not ok:
            raise ValueError(f"seeds must be {_SEEDS_SHAPES}")
        return v

    @property
    def auto_seeds(self) -> AutoSeeds | None:
        """The `seeds: auto` settings, or None for an explicit list."""
        return self.seeds.auto if isinstance(self.seeds, SeedsAuto) else None

    def train_seeds(self) -> list[int]:
        """The seeds every variant trains for sure: the explicit list, or with `seeds: auto` 0..min-1."""
        auto = self.auto_seeds
        return list(range(auto.min)) if auto else list(self.seeds)

    def seeds_text(self) -> str:
        """"[0, 1, 2]", or "auto (3 to 8 seeds while a baseline comparison is unresolved)"."""
        a = self.auto_seeds
        if a is None:
            return str(list(self.seeds))
        return f"auto ({a.min} to {a.max} seeds while a {a.target} comparison is unresolved)"

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad or not v:
            raise ValueError(f"unknown stage {bad[0] if bad else '(none given)'!r}; allowed: {', '.join(STAGES)}")
        return [s for s in STAGES if s in v]  # canonical order: profile, timing, train

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid.{key} is an empty list; give at least one value")
        return v

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, overrides in enumerate(v):
            if not overrides:
                raise ValueError(f"variants[{i}] is empty; give each variant at least one dotted key, "
                                 "e.g. {model.head: fc, model.head_dropout: 0.0}")
        return v

    @model_validator(mode="after")
    def _some_variant(self) -> SuiteConfig:
        if not self.grid and not self.variants:
            raise ValueError("grid and variants are both empty: give a grid (dotted keys with lists of values, "
                             "e.g. grid: {model.n_1x1: [0, 1, 2]}) or a variants list (one mapping of dotted "
                             "keys per variant)")
        both = sorted({k for overrides in self.variants for k in overrides} & set(self.grid))
        if both:
            raise ValueError(f"{both[0]!r} is both a grid key and a key of a variants entry: set it in one place")
        return self


# ---- loading, overrides, protocol ------------------------------------------------------------------------

_DOTTED_DICTS = ("grid", "cpu", "gpu", "quick")  # sections whose keys are themselves dotted paths
_OVERRIDABLE = ("model", "data", "train", "timing")  # what grid / protocol blocks may change
_RUN_LEVEL = ("seeds", "threads")  # top-level keys a cpu/gpu/quick block and --set may change too
# Sections a config may no longer hold, and why: an old YAML gets this instead of "unknown key".
_REMOVED = {"profile": "the backward FLOPs are always counted"}

# --quick: a smoke run of every stage (seconds per variant, not minutes), applied after the cpu/gpu block; each is
# an upper bound (`quick_shrink`): a suite's own smaller value stays.
QUICK_DEFAULTS: dict[str, Any] = {
    "timing.warmup": 2,
    "timing.repeats": 3,
    "timing.rounds": 3,
    "timing.min_window_ms": 10.0,
    "train.epochs": 1,
    "train.subset": 2000,
    "train.val_size": 1000,
    "train.train_eval_size": 1000,
    "train.test_subset": 1000,
}


def _fail(err: ValidationError, context: str = "") -> ConfigError:
    """Turn the first pydantic error into one readable line naming the key path (and its context)."""
    e = err.errors()[0]
    path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
    if e["type"] == "extra_forbidden":
        msg = f"unknown key {path!r}; allowed here: {', '.join(_allowed_keys(e['loc']))}"
    elif e["type"] == "missing":
        msg = f"missing required key {path!r}"
    else:
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        text = e["msg"].removeprefix("Value error, ")
        msg = f"{path}: {text}{got}" if path else f"{text}{got}"
    return ConfigError(f"{context}: {msg}" if context else msg)


def _allowed_keys(loc: tuple) -> list[str]:
    cls: type[BaseModel] = SuiteConfig
    for part in loc[:-1]:
        ann = cls.model_fields.get(str(part))
        if ann is None or not (isinstance(ann.annotation, type) and issubclass(ann.annotation, BaseModel)):
            return []
        cls = ann.annotation
    return sorted(cls.model_fields)


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` (dotted) in a raw config dict; inside grid/cpu/gpu/quick the rest of the key is one entry.

    Args:
        raw: the YAML mapping, modified in place.
        key: e.g. "model.n_1x1", "grid.model.n_1x1", "train.epochs".
        value: the new value.
    """
    parts = key.split(".")
    split = 2 if parts[:2] == ["report", "baseline"] else 1 if parts[0] in _DOTTED_DICTS else 0
    if split and len(parts) > split:
        parts = parts[:split] + [".".join(parts[split:])]
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key!r}: {'.'.join(parts[:i + 1])} is {nxt!r}, not a mapping")
        node = nxt
    node[parts[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one `--set key=value`; the value is read as YAML (so 2 is an int, 5e-4 a float, [0,1] a list)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        return key.strip(), load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({exc.__class__.__name__})") from None


def _check_removed(raw: dict[str, Any]) -> None:
    """Fail with the reason when a raw mapping uses a removed section, itself or as a grid/cpu/gpu/quick key."""
    blocks = [(f"{b}.", raw[b]) for b in _DOTTED_DICTS if isinstance(raw.get(b), dict)]
    for section, why in _REMOVED.items():
        used = [f"{at}{k}" for at, keys in [("", raw), *blocks] for k in keys if k.split(".")[0] == section]
        if used:
            raise ConfigError(f"{used[0]}: the {section!r} section was removed ({why}); delete it")
    timing = raw.get("timing") if isinstance(raw.get("timing"), dict) else {}
    moved = ["timing.threads"] if "threads" in timing else [f"{at}{k}" for at, keys in blocks for k in keys
                                                              if k == "timing.threads"]
    if moved:
        raise ConfigError(f"{moved[0]}: the thread count is a run-level setting now (it governs training too); "
                          "write `threads:` at the top level instead")


def validate(raw: dict[str, Any], where: str = "", base: Path | None = None) -> SuiteConfig:
    """Validate a raw mapping (its `protocols` merged under it), every grid point and override block included.

    Args:
        raw: a suite's mapping.
        where: context for error messages.
        base: the folder relative protocol paths are taken from; None: the working directory.
    """
    return _validate_merged(with_protocols(raw, base, SuiteConfig.model_fields), where)


def _validate_merged(raw: dict[str, Any], where: str = "", last: dict[str, Any] | None = None) -> SuiteConfig:
    """Validate a merged mapping, each grid value and each override block (with `last`, --set, on top of it)."""
    _check_removed(raw)
    try:
        cfg = SuiteConfig.model_validate(raw)
    except ValidationError as err:
        raise _fail(err, where) from None
    for block in ("cpu", "gpu", "quick", "grid"):
        for key in getattr(cfg, block):
            head = key.split(".")[0]
            if head not in _OVERRIDABLE and not (block != "grid" and key in _RUN_LEVEL):
                raise ConfigError(f"{block}.{key}: cannot be overridden here; keys must start with "
                                  f"{', '.join(_OVERRIDABLE)}" + ("" if block == "grid" else " (or be 'seeds' or 'threads')"))
    for i, overrides in enumerate(cfg.variants):
        for key in overrides:
            if key.split(".")[0] not in _OVERRIDABLE:
                raise ConfigError(f"variants[{i}].{key}: cannot be overridden here; keys must start with "
                                  f"{', '.join(_OVERRIDABLE)}")
        apply_overrides(cfg, overrides, where=f"variants[{i}]")
    for key, values in cfg.grid.items():
        for value in values:
            apply_overrides(cfg, {key: value}, where=f"grid.{key}")
    for block in ("cpu", "gpu", "quick"):  # as `resolve_protocol` applies them: --set has the last word
        apply_overrides(cfg, {**getattr(cfg, block), **(last or {})}, where=block)
    return cfg


def apply_overrides(cfg: SuiteConfig, overrides: dict[str, Any], where: str = "") -> SuiteConfig:
    """Return a copy of `cfg` with dotted overrides applied and validated."""
    if not overrides:
        return cfg
    raw = cfg.model_dump()
    for key, value in overrides.items():
        set_dotted(raw, key, copy.deepcopy(value))
    try:
        return SuiteConfig.model_validate(raw)
    except ValidationError as err:
        raise _fail(err, where) from None


def load_config(path: Path, sets: list[str] = ()) -> SuiteConfig:
    """Read a suite YAML, merge its protocols under it, override (`--set`) and validate.

    Args:
        path: the YAML file.
        sets: `key=value` strings from the command line, applied in order after the protocols are merged
            (`--set protocols=[...]` replaces the suite's list before the merge). Each override block is
            validated with them on top, as `resolve_protocol` applies it.

    Returns:
        The validated, frozen config (protocol blocks not yet applied: see `resolve_protocol`).
    """
    path = Path(path)
    raw = read_yaml(path)
    pairs = [parse_set(item) for item in sets]
    for key, value in pairs:
        if key == "protocols":
            raw["protocols"] = value
    raw = with_protocols(raw, path.parent, SuiteConfig.model_fields)
    for key, value in pairs:
        set_dotted(raw, key, value)
    return _validate_merged(raw, last=_last_word(pairs))


def _last_word(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The `--set` pairs that override settings (not the override blocks, grid or name): re-applied on top of
    every protocol block, so the command line has the last word."""
    return {k: v for k, v in pairs if k.split(".")[0] in _OVERRIDABLE or k in _RUN_LEVEL}


def quick_shrink(cfg: SuiteConfig) -> dict[str, Any]:
    """--quick's smoke settings for `cfg`: each size the smaller of `QUICK_DEFAULTS` and cfg's own (a subset of
    None, all images, takes the default), so --quick never turns a valid suite invalid; the timing sweep keeps
    its smallest and its reference batch size, and one seed (`seeds: auto` becomes [0]).

    Returns:
        dotted key -> value, to apply over `cfg` (then the suite's `quick:` block, then --set).
    """
    now = cfg.model_dump()
    shrink: dict[str, Any] = {}
    for key, default in QUICK_DEFAULTS.items():
        section, field = key.split(".")
        own = now[section][field]
        shrink[key] = default if own is None else min(default, own)
    t = cfg.timing
    sizes = sorted({min(t.batch_sizes), t.reference_batch_size})
    shrink["timing.batch_sizes"] = sizes
    for key in ("compile_batch_sizes", "layer_timing_batch_sizes"):  # they must stay among the batch sizes
        if getattr(t, key) is not None:
            shrink[f"timing.{key}"] = [b for b in getattr(t, key) if b in sizes] or None
    shrink["seeds"] = cfg.train_seeds()[:1]  # seeds: auto too becomes its first seed, [0]
    return shrink


def resolve_protocol(cfg: SuiteConfig, *, cuda: bool, quick: bool = False, full: bool = False,
                     sets: list[str] = (), seen_by: str = "torch") -> tuple[SuiteConfig, str, str]:
    """Pick the device and protocol and apply the matching override blocks, each with `--set` on top.

    Args:
        cfg: a validated config.
        cuda: whether a CUDA device is usable here.
        quick: the smoke protocol (`--quick`: `quick_shrink`, then the `quick:` block).
        full: on a CPU-only machine, run the YAML's full protocol instead of its `cpu:` block (`--full`).
        sets: the command line's `key=value` overrides: they have the last word, over the protocol blocks too.
        seen_by: who answered `cuda` (for the error when `device: cuda` is asked for; see `resolve_device`).

    Returns:
        (config with overrides applied, protocol name: "gpu" | "cpu" | "full" | "quick", device: "cuda" | "cpu").
    """
    device = resolve_device(cfg.device, cuda, seen_by=seen_by)
    last = _last_word([parse_set(item) for item in sets])
    protocol = "gpu" if device == "cuda" else "full" if full else "cpu"
    block = {"gpu": cfg.gpu, "cpu": cfg.cpu, "full": {}}[protocol]
    cfg = apply_overrides(cfg, {**block, **last}, protocol)  # one validation: --set may rely on the block's values
    if quick:
        cfg, protocol = apply_overrides(cfg, {**quick_shrink(cfg), **cfg.quick, **last}, "quick"), "quick"
    return cfg.model_copy(update={"device": device}), protocol, device


def upgrade_resolved(raw: dict[str, Any]) -> dict[str, Any]:
    """A resolved config written by an earlier version, in today's keys (a copy): `timing.threads` became the
    run-level `threads`. What a results folder's `config.resolved.yaml` is read through before it is compared."""
    out = copy.deepcopy(raw)
    timing = out.get("timing")
    if isinstance(timing, dict) and "threads" in timing:
        out.setdefault("threads", timing.pop("threads"))
    return out


def config_of_folder(raw: dict[str, Any]) -> tuple[SuiteConfig, str] | None:
    """The validated config and protocol a folder's `config.resolved.yaml` holds, or None when it is not a
    resolved config of this version (absent, from an unknown version, or invalid)."""
    raw = upgrade_resolved(raw)
    protocol = raw.pop("protocol", None)
    if not isinstance(protocol, str):
        return None
    try:
        return SuiteConfig.model_validate(raw), protocol
    except ValidationError:
        return None
