"""The config keys that load under other names than demsr's: the reference's ``DEM-SRNet.yaml``
keys that demsr names differently (:data:`REFERENCE_ALIASES`), fixes (:data:`REFERENCE_FIXED`)
or ignores (:data:`REFERENCE_IGNORED`), and demsr's own deprecated names (:data:`RENAMED_KEYS`,
translated by :func:`renamed_key`; :func:`upgrade_config_dict` renames them in a recorded
config). :mod:`demsr.config` applies them as it loads a file or an override. Also
:func:`check_known_keys`, which refuses a recorded dict's keys that are not a dataclass's fields
(model configs, elevation scalings, prepare options).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

# Warnings go out under the config's logger: they concern the file being loaded.
log = logging.getLogger("demsr.config")


# The reference's keys, as (section, key).
REFERENCE_ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    ("model", "out_channels"): ("model", "channels"),
    ("model", "num_blocks"): ("model", "blocks"),
    ("data", "epochs"): ("train", "epochs"),
    ("optimizer", "epochs"): ("train", "epochs"),
    ("summary", "summary_dir"): ("summary", "output_dir"),
}
# demsr's own keys renamed to spell out learning_rate (the naming rule): the old names still
# load, from YAML and --set with a deprecation warning, and silently from the configs recorded in
# existing checkpoints (so their runs resume). The old names go in a later release.
RENAMED_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("optimizer", "lr_decay"): ("optimizer", "learning_rate_decay"),
    ("optimizer", "finetune_lr"): ("optimizer", "finetune_learning_rate"),
    ("optimizer", "lr_scaling"): ("optimizer", "learning_rate_scaling"),
}


def renamed_key(section_name: str, key: str, source: str | None = None) -> tuple[str, str]:
    """``(section, key)`` under its current name; an old name (:data:`RENAMED_KEYS`) is
    translated, with one deprecation warning naming ``source`` when one is given."""
    new = RENAMED_KEYS.get((section_name, key))
    if new is None:
        return section_name, key
    if source is not None:
        log.warning(
            "%s: %s.%s is deprecated, use %s.%s (the old name is removed in a later release)",
            source,
            section_name,
            key,
            *new,
        )
    return new


def upgrade_config_dict(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict (e.g. a checkpoint's recorded ``training`` config) with the old key names
    of :data:`RENAMED_KEYS` replaced by the current ones; other keys as they are."""
    upgraded: dict[str, Any] = {}
    for section_name, section_values in values.items():
        if not isinstance(section_values, dict):
            upgraded[section_name] = section_values
            continue
        section: dict[str, Any] = upgraded.setdefault(section_name, {})
        for key, value in section_values.items():
            section[renamed_key(str(section_name), str(key))[1]] = value
    return upgraded


REFERENCE_FIXED: dict[tuple[str, str], tuple[Any, ...]] = {
    ("model", "name"): ("DEMNet", "DEMSRNet", "DEM-SRNet"),
    ("model", "in_channels"): (1,),
    ("model", "kernel_size"): (3,),
    ("train", "distribute"): (False,),
}
REFERENCE_IGNORED: set[tuple[str, str]] = {
    ("data", "name"),
    ("summary", "save_checkpoint_steps"),
    ("summary", "keep_checkpoint_max"),
    ("train", "name"),
    ("train", "device_id"),
    ("train", "amp_level"),
    ("train", "run_mode"),
    ("train", "load_ckpt"),
    ("train", "ckpt_path"),
}


def check_known_keys(cls: type, values: dict[str, Any], what: str) -> None:
    """Refuse keys that are not fields of the dataclass ``cls`` (a typo must not pass)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)} (known: {sorted(known)})")
