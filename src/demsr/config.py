"""Run configuration: nested dataclasses loaded from YAML, with type-checked overrides.

The sections follow the reference's ``DEM-SRNet.yaml`` (model / data / optimizer / summary /
train; demsr adds ``finetune``), so its files load as they are: its keys that demsr names
differently are translated, keys whose value demsr fixes are checked, and keys that only steered
the reference's runtime are accepted and ignored; demsr's own renamed keys load under their old
names with a deprecation warning (the tables of these keys: :mod:`demsr.config_keys`). Any other
unknown key is an error. Overrides (``section.key=value``) are parsed as YAML scalars (a YAML list
for list fields) and checked against the field's type; nothing is evaluated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from demsr.config_keys import (
    REFERENCE_ALIASES,
    REFERENCE_FIXED,
    REFERENCE_IGNORED,
    RENAMED_KEYS,
    renamed_key,
)
from demsr.model import FREEZE_PRESETS, INIT_SCHEMES, PRECISIONS, PRESETS, ModelConfig, preset
from demsr.scaling import ElevationScaling

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


_ARCHITECTURE = ("blocks", "channels", "scale", "bias", "resize", "padding")

# How optimizer.learning_rate_scaling adapts the learning rate to the number of ranks of a
# torchrun run (demsr.optimizer.scaled_learning_rate).
LEARNING_RATE_SCALINGS = ("none", "linear", "sqrt")


@dataclass
class ModelSection:
    """Network shape (a preset, with any field replaced; ``None`` keeps the preset's value),
    how elevations are scaled for it (see ``ElevationScaling``) and how it is initialised."""

    preset: str = "lite"
    blocks: int | None = None
    channels: int | None = None
    scale: int | None = None
    bias: bool | None = None
    resize: str | None = None
    padding: str | None = None
    elevation_offset_m: float = 0.0
    elevation_scale_m: float = 1000.0
    trend_sigma_px: float = 4.0
    base: str = "trend"
    backprojection_iterations: int = 0
    block_mean_constraint: bool = False
    init: str = "interpolation"

    def build(self) -> ModelConfig:
        overrides = {
            name: getattr(self, name) for name in _ARCHITECTURE if getattr(self, name) is not None
        }
        return preset(self.preset, **overrides)

    def scaling(self) -> ElevationScaling:
        return ElevationScaling(
            offset_m=self.elevation_offset_m,
            scale_m=self.elevation_scale_m,
            trend_sigma_px=self.trend_sigma_px,
            base=self.base,
            backprojection_iterations=self.backprojection_iterations,
            block_mean_constraint=self.block_mean_constraint,
        )

    @classmethod
    def describing(
        cls, model_config: ModelConfig, scaling: ElevationScaling, init: str = "interpolation"
    ) -> ModelSection:
        """The section that builds exactly ``model_config`` with ``scaling`` (e.g. a parent
        checkpoint's): the matching preset, or ``lite`` with every field written out."""
        name = next((n for n, p in PRESETS.items() if p == model_config), "lite")
        return cls(
            preset=name,
            **{field_name: getattr(model_config, field_name) for field_name in _ARCHITECTURE},
            elevation_offset_m=scaling.offset_m,
            elevation_scale_m=scaling.scale_m,
            trend_sigma_px=scaling.trend_sigma_px,
            base=scaling.base,
            backprojection_iterations=scaling.backprojection_iterations,
            block_mean_constraint=scaling.block_mean_constraint,
            init=init,
        )


# Where training pairs come from (data.source).
DATA_SOURCES = ("pairs", "rasters")
# Low-res patch size of windows drawn from rasters when data.patch_size is not set.
DEFAULT_WINDOW_PATCH_PX = 32


@dataclass
class DataSection:
    """Where the training pairs come from.

    ``source: pairs`` (the default): fixed pair files, ``train/train.h5`` and
    ``valid/valid.h5`` under ``root_dir``. ``source: rasters``: windows drawn at random from
    rasters at every step (:class:`demsr.datasets.RasterWindowDataset`): ``rasters`` lists
    files, folders and glob patterns; the rasters named in ``heldout`` (file names without
    suffix, or paths) are never used, those in ``valid_rasters`` give ``valid_windows`` fixed
    validation windows, the rest train; an epoch is ``train.max_steps_per_epoch`` steps. A
    window holding nodata, or more than ``max_sea_fraction`` of cells at exactly 0 m (SRTM's
    sea), is never drawn. Its low-res input is the exact block mean, or with probability
    ``degradation_probability`` the degradation model of ``degradation`` (a YAML written by
    ``demsr calibrate``; or a callable given to the trainer). With pair files, ``degradation``
    remakes every training pair's low-res patch.

    ``batch_size`` is per rank: under torchrun each step trains on ``batch_size`` x world size
    pairs in all (the global batch).
    """

    root_dir: str = "data"
    batch_size: int = 64
    num_workers: int = 0
    augment: bool = False
    # Low-res patch size (the reference's key); when set, the files must match it.
    patch_size: int | None = None
    # A degradation model (YAML from `demsr calibrate`, e.g. configs/degradation-gebco.yaml):
    # when set, each training pair's low-res patch is made afresh from its high-res patch by it,
    # drawn per pair and epoch (demsr.degradation.DegradationModel.apply); validation pairs
    # stay as stored.
    degradation: str | None = None
    source: str = "pairs"
    rasters: list[str] = field(default_factory=list)
    heldout: list[str] = field(default_factory=list)
    valid_rasters: list[str] = field(default_factory=list)
    valid_windows: int = 256
    max_sea_fraction: float = 0.0
    degradation_probability: float = 0.0


@dataclass
class OptimizerSection:
    """Adam with an exponential learning-rate decay applied once per epoch.

    ``learning_rate_scaling`` adapts ``learning_rate`` and ``finetune_learning_rate`` to the
    number of ranks of a torchrun run, whose global batch is ``data.batch_size`` x world size:
    ``none`` keeps them, ``linear`` multiplies them by the world size, ``sqrt`` by its square
    root.
    """

    name: str = "adam"
    learning_rate: float = 1e-4
    eps: float = 1e-8
    weight_decay: float = 0.0
    learning_rate_decay: float = 0.98
    # The learning rate of fine-tuning runs (``demsr finetune``), in place of learning_rate.
    finetune_learning_rate: float = 1e-5
    learning_rate_scaling: str = "none"


@dataclass
class TrainSection:
    epochs: int = 300
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    # Caps for short runs (a CPU demo, a smoke test); None = no cap.
    max_steps_per_epoch: int | None = None
    max_steps: int | None = None
    deterministic: bool = False
    # Also write last.safetensors whenever this many seconds have passed since the last one
    # (mid-epoch: --resume continues from that step exactly); None: at epoch ends only.
    checkpoint_every_s: float | None = None
    # Weight of the slope term of the loss: the mean squared error of the output's finite
    # differences between neighbouring cells (in elevation_scale_m units), added to the MSE.
    gradient_loss_weight: float = 0.0


@dataclass
class SummarySection:
    output_dir: str = "runs/demsr"
    save_checkpoint_epochs: int = 1
    log_every_steps: int = 50


@dataclass
class FinetuneSection:
    """Fine-tuning from a trained checkpoint (``demsr finetune``); unused while ``parent`` is None.

    The weights, model config and elevation scaling come from ``parent`` (the model section is
    replaced by the parent's); the learning rate is ``optimizer.finetune_learning_rate``. Frozen
    parameters: the ``freeze`` preset (see ``demsr.model.freeze_preset_prefixes``: ``default``
    = conv1 and the first ``freeze_blocks`` residual blocks, None = half of them; ``none``;
    ``all-but-tail`` = all but conv_up and conv_out) plus the module names in
    ``freeze_prefixes`` (dotted, e.g. ``conv2``, ``body.3`` or ``body.3.res_conv1``; a name that
    matches no parameter is an error).
    """

    parent: str | None = None
    freeze: str = "default"
    freeze_blocks: int | None = None
    freeze_prefixes: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    train: TrainSection = field(default_factory=TrainSection)
    summary: SummarySection = field(default_factory=SummarySection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def to_dict(self) -> dict[str, Any]:
        """All values, with the model section resolved against its preset."""
        values = dataclasses.asdict(self)
        values["model"].update(self.model.build().to_dict())
        return values

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        """Check values that types alone do not constrain; raises ConfigError."""
        try:
            self.model.build()
            self.model.scaling()
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        checks = [
            (self.model.init in INIT_SCHEMES, f"model.init must be one of {INIT_SCHEMES}"),
            (self.data.batch_size >= 1, "data.batch_size must be >= 1"),
            (self.data.num_workers >= 0, "data.num_workers must be >= 0"),
            (
                self.data.source in DATA_SOURCES,
                f"data.source must be one of {', '.join(DATA_SOURCES)}",
            ),
            (
                self.data.source != "rasters" or bool(self.data.rasters),
                "data.source=rasters needs data.rasters (files, folders or glob patterns)",
            ),
            (
                self.data.source != "rasters" or bool(self.data.valid_rasters),
                "data.source=rasters needs data.valid_rasters (rasters kept for validation)",
            ),
            (
                self.data.source != "rasters" or self.train.max_steps_per_epoch is not None,
                "data.source=rasters needs train.max_steps_per_epoch (the length of an epoch)",
            ),
            (self.data.valid_windows >= 1, "data.valid_windows must be >= 1"),
            (
                self.data.patch_size is None or self.data.patch_size >= 1,
                "data.patch_size must be >= 1",
            ),
            (
                0.0 <= self.data.max_sea_fraction <= 1.0,
                "data.max_sea_fraction must be in [0, 1]",
            ),
            (
                0.0 <= self.data.degradation_probability <= 1.0,
                "data.degradation_probability must be in [0, 1]",
            ),
            (
                self.train.checkpoint_every_s is None or self.train.checkpoint_every_s >= 0,
                "train.checkpoint_every_s must be >= 0",
            ),
            (self.train.gradient_loss_weight >= 0, "train.gradient_loss_weight must be >= 0"),
            (self.optimizer.name.lower() == "adam", "optimizer.name must be 'adam'"),
            (self.optimizer.learning_rate > 0, "optimizer.learning_rate must be > 0"),
            (
                self.optimizer.finetune_learning_rate > 0,
                "optimizer.finetune_learning_rate must be > 0",
            ),
            (
                0 < self.optimizer.learning_rate_decay <= 1,
                "optimizer.learning_rate_decay must be in (0, 1]",
            ),
            (
                self.optimizer.learning_rate_scaling in LEARNING_RATE_SCALINGS,
                "optimizer.learning_rate_scaling must be one of "
                + ", ".join(LEARNING_RATE_SCALINGS),
            ),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (self.train.patience >= 1, "train.patience must be >= 1"),
            (
                self.train.device in ("auto", "cpu", "cuda")
                or self.train.device.startswith("cuda:"),
                "train.device must be auto, cpu, cuda or cuda:N",
            ),
            (
                self.train.precision in ("auto", *PRECISIONS),
                "train.precision must be auto, fp32 or bf16",
            ),
            (
                self.summary.save_checkpoint_epochs >= 1,
                "summary.save_checkpoint_epochs must be >= 1",
            ),
            (
                self.finetune.freeze in FREEZE_PRESETS,
                f"finetune.freeze must be one of {', '.join(FREEZE_PRESETS)}",
            ),
            (
                self.finetune.freeze_blocks is None or self.finetune.freeze_blocks >= 0,
                "finetune.freeze_blocks must be >= 0",
            ),
            (
                self.finetune.freeze_blocks is None or self.finetune.freeze == "default",
                "finetune.freeze_blocks applies only to finetune.freeze=default",
            ),
            (
                all(p.strip(".") for p in self.finetune.freeze_prefixes),
                "finetune.freeze_prefixes must be module names such as conv1 or body.0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def _field_types(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def _coerce(value: Any, expected: Any, where: str) -> Any:
    """Check ``value`` against a field annotation (int, float, bool, str, X | None, list[X])."""
    origin = typing.get_origin(expected)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(expected)
        return [_coerce(item, item_type, where) for item in value]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
    elif expected is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    name = getattr(expected, "__name__", str(expected))
    raise ConfigError(f"{where}: expected {name}, got {value!r}")


def _set(config: RunConfig, section_name: str, key: str, value: Any, source: str) -> None:
    where = f"{source}: {section_name}.{key}"
    sections = {f.name for f in dataclasses.fields(config)}
    if section_name not in sections:
        raise ConfigError(f"{source}: unknown section {section_name!r} (known: {sorted(sections)})")
    if (section_name, key) in RENAMED_KEYS:
        section_name, key = renamed_key(section_name, key, source)
        where = f"{source}: {section_name}.{key}"
    elif (section_name, key) in REFERENCE_ALIASES:
        section_name, key = REFERENCE_ALIASES[(section_name, key)]
    elif (section_name, key) in REFERENCE_FIXED:
        allowed = REFERENCE_FIXED[(section_name, key)]
        if value not in allowed:
            raise ConfigError(f"{where}: demsr supports only {list(allowed)}, got {value!r}")
        return
    elif (section_name, key) in REFERENCE_IGNORED:
        log.debug("%s is a reference runtime setting; ignored", where)
        return
    section = getattr(config, section_name)
    types_by_name = _field_types(section)
    if key not in types_by_name:
        raise ConfigError(f"{where}: unknown key (known: {sorted(types_by_name)})")
    setattr(section, key, _coerce(value, types_by_name[key], where))


def config_from_dict(values: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts (e.g. parsed YAML); unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(values).__name__}")
    config = RunConfig()
    # Order does not matter: the model section is resolved against its preset only in build().
    for section_name, section_values in values.items():
        if section_values is None:
            continue
        if not isinstance(section_values, dict):
            raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
        for key, value in section_values.items():
            _set(config, str(section_name), str(key), value, source)
    config.validate()
    return config


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML config (``None``: defaults) and apply ``section.key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    config = config_from_dict(values, source=str(path) if path else "defaults")
    apply_overrides(config, overrides)
    return config


def _field_type(config: RunConfig, section_name: str, key: str) -> Any:
    section = getattr(config, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        return None
    return _field_types(section).get(key)


def _is_text(expected: Any) -> bool:
    """Whether a field annotation is ``str`` or a union holding it."""
    return expected is str or (
        typing.get_origin(expected) in (typing.Union, types.UnionType)
        and str in typing.get_args(expected)
    )


def _is_optional(expected: Any) -> bool:
    return type(None) in typing.get_args(expected)


def apply_overrides(config: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply ``section.key=value`` strings; values are YAML scalars, checked by type."""
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        section_name, key = dotted.strip().split(".", 1)
        expected = _field_type(config, *renamed_key(section_name, key))
        if _is_text(expected):
            # Text (a path, a name) is taken as written: "2024-01-01" or "a: b" stay strings.
            value: Any = (
                None if raw.strip() in ("", "null", "~") and _is_optional(expected) else raw
            )
        else:
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError:
                value = raw
        if isinstance(value, dict) or (
            isinstance(value, list) and typing.get_origin(expected) is not list
        ):
            raise ConfigError(f"override {item!r}: expected a single value")
        _set(config, section_name, key, value, "override")
    config.validate()
    return config
