"""The published HDF5 pair layout, read: :class:`Normalisation` (metres <-> stored values),
what a pair file says about itself (:class:`PairMetadata`, :class:`PairLayout`), and
:func:`inspect_pair_file` / :func:`read_pair_file`, for our files and the published ones."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from demsr import __version__

_log = logging.getLogger("demsr.datasets")  # the package's one logger, as before the split


@dataclass(frozen=True)
class Normalisation:
    """Linear map between metres and the network's units: ``metres = value * scale_m + offset_m``.

    The default maps -11000..9000 m (deepest trench to highest peak) onto 0..1, one fixed range
    for land and sea so that a land model and its ocean fine-tuning share the same units.
    """

    offset_m: float = -11000.0
    scale_m: float = 20000.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.offset_m) or not np.isfinite(self.scale_m) or self.scale_m == 0:
            raise ValueError(f"invalid normalisation offset={self.offset_m} scale={self.scale_m}")

    def normalise(self, metres: Any) -> Any:
        return (metres - self.offset_m) / self.scale_m

    def denormalise(self, values: Any) -> Any:
        return values * self.scale_m + self.offset_m

    def to_dict(self) -> dict[str, float]:
        return {"offset_m": float(self.offset_m), "scale_m": float(self.scale_m)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Normalisation:
        return cls(offset_m=float(values["offset_m"]), scale_m=float(values["scale_m"]))


IDENTITY = Normalisation(offset_m=0.0, scale_m=1.0)


# --- The HDF5 pair layout -------------------------------------------------------------------------
#
# One file per split (``train/train.h5``, ``valid/valid.h5``, ``test/test.h5``). At the root:
#
#   "{h}_{w}"        (N, 1, h, w) float32   low-res patches, normalised (e.g. "32_32")
#   "{H}_{W}"        (N, 1, H, W) float32   high-res patches, normalised (e.g. "160_160")
#   "source_windows" (N, 5) int64           (file index, row_off, col_off, height, width) of
#                                           the high-res window in source_files[file index]
#
# and attributes (all optional when reading: the published MindEarth files have none):
#
#   scale                  int     H / h
#   elevation_offset_m     float   metres = value * elevation_scale_m + elevation_offset_m
#   elevation_scale_m      float
#   source_files           str[]   paths of the rasters the patches come from
#   source_crs             str[]   CRS of each source file ("EPSG:4326" or WKT; "" if none)
#   split                  str     "train", "valid" or "test"
#   seed                   int     seed the split and subsets were drawn from
#   prepare_options        str     JSON of the options prepare ran with
#   provenance             str     JSON: where the low-res member came from, when not the block
#                                  mean (a real coarse product: both sources, the sub-grid)
#   demsr_version          str
#
# The two patch datasets are the only root datasets named "<int>_<int>"; which one is low-res is
# told by their sizes, so a reader needs no attribute to find them.

SOURCE_WINDOWS_KEY = "source_windows"
_PATCH_KEY = re.compile(r"^(\d+)_(\d+)$")


def patch_key(height_px: int, width_px: int | None = None) -> str:
    """Dataset name of ``height_px`` x ``width_px`` patches: ``patch_key(32) == "32_32"``."""
    return f"{height_px}_{height_px if width_px is None else width_px}"


@dataclass
class PairMetadata:
    """What a pair file says about itself (its HDF5 attributes).

    ``normalisation`` maps the stored values to metres. For files without attributes (the
    published MindEarth files) it is ``IDENTITY``, i.e. values stay in the file's own units, and
    ``has_attributes`` is False.
    """

    scale: int
    normalisation: Normalisation = IDENTITY
    split: str = ""
    seed: int | None = None
    source_files: tuple[str, ...] = ()
    source_crs: tuple[str, ...] = ()
    prepare_options: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    demsr_version: str = __version__
    has_attributes: bool = True
    normalisation_known: bool = True

    @property
    def units(self) -> str:
        """``"m"`` when ``normalisation`` maps values to metres, ``"normalised"`` when unknown."""
        return "m" if self.normalisation_known else "normalised"

    def __post_init__(self) -> None:
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale}")
        if self.source_crs and len(self.source_crs) != len(self.source_files):
            raise ValueError(
                f"source_crs has {len(self.source_crs)} entries for "
                f"{len(self.source_files)} source files"
            )


@dataclass(frozen=True)
class PairLayout:
    """Where the pairs are in a validated pair file, and how big they are."""

    path: Path
    lowres_key: str
    highres_key: str
    count: int
    lowres_shape: tuple[int, int]  # (h, w) cells of one low-res patch
    highres_shape: tuple[int, int]  # (H, W) = (h * scale, w * scale)
    has_source_windows: bool
    metadata: PairMetadata

    @property
    def scale(self) -> int:
        return self.metadata.scale

    @property
    def normalisation(self) -> Normalisation:
        return self.metadata.normalisation


class LayoutFacts:
    """What :class:`PairFile` and :class:`PairDataset` tell about their file, read from
    ``layout``."""

    layout: PairLayout

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def metadata(self) -> PairMetadata:
        return self.layout.metadata

    @property
    def scale(self) -> int:
        return self.layout.scale

    @property
    def normalisation(self) -> Normalisation:
        return self.layout.normalisation

    @property
    def units(self) -> str:
        """``"m"`` when values convert to metres, ``"normalised"`` for published files."""
        return self.layout.metadata.units

    @property
    def lowres_patch_px(self) -> int:
        return self.layout.lowres_shape[0]

    @property
    def highres_patch_px(self) -> int:
        return self.layout.highres_shape[0]

    def __len__(self) -> int:
        return self.layout.count


@dataclass
class PairFile(LayoutFacts):
    """A pair file in memory: ``lowres`` (N,1,h,w) and ``highres`` (N,1,H,W) float32, normalised.

    ``source_windows`` is (N,5) int64 (file index, row_off, col_off, height, width) of each
    high-res patch in its source raster, or None when the file does not record it.
    """

    layout: PairLayout
    lowres: np.ndarray
    highres: np.ndarray
    source_windows: np.ndarray | None


def _attr_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return str(value)


def _attr_strs(value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)):
        return (_attr_str(value),)
    return tuple(_attr_str(item) for item in np.asarray(value).ravel())


def _read_metadata(handle: h5py.File, path: Path, shape_scale: int) -> PairMetadata:
    attrs = handle.attrs
    if "scale" not in attrs:
        _log.warning(
            "%s has no demsr attributes (a published-layout file?): scale %d inferred from the "
            "patch sizes; normalisation unknown (IDENTITY assumed), so values and metrics will "
            "be in the file's normalised units, not metres",
            path,
            shape_scale,
        )
        return PairMetadata(
            scale=shape_scale,
            normalisation=IDENTITY,
            has_attributes=False,
            normalisation_known=False,
        )
    scale = int(attrs["scale"])
    if scale != shape_scale:
        raise ValueError(
            f"{path}: attribute scale={scale} disagrees with the patch sizes (ratio {shape_scale})"
        )
    normalisation_known = "elevation_offset_m" in attrs and "elevation_scale_m" in attrs
    if normalisation_known:
        normalisation = Normalisation(
            offset_m=float(attrs["elevation_offset_m"]), scale_m=float(attrs["elevation_scale_m"])
        )
    else:
        _log.warning(
            "%s records no normalisation: values and metrics stay in normalised units", path
        )
        normalisation = IDENTITY
    options_json = attrs.get("prepare_options")
    try:
        options = json.loads(_attr_str(options_json)) if options_json is not None else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: attribute prepare_options is not valid JSON ({exc})") from None
    provenance_json = attrs.get("provenance")
    try:
        provenance = json.loads(_attr_str(provenance_json)) if provenance_json is not None else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: attribute provenance is not valid JSON ({exc})") from None
    source_files = _attr_strs(attrs["source_files"]) if "source_files" in attrs else ()
    source_crs = _attr_strs(attrs["source_crs"]) if "source_crs" in attrs else ()
    try:
        return PairMetadata(
            scale=scale,
            normalisation=normalisation,
            split=_attr_str(attrs.get("split", "")),
            seed=int(attrs["seed"]) if "seed" in attrs else None,
            source_files=source_files,
            source_crs=source_crs,
            prepare_options=options,
            provenance=provenance,
            demsr_version=_attr_str(attrs.get("demsr_version", "unknown")),
            has_attributes=True,
            normalisation_known=normalisation_known,
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _layout_of(handle: h5py.File, path: Path) -> PairLayout:
    patch_sets: list[tuple[str, h5py.Dataset]] = []
    for key, item in handle.items():
        if isinstance(item, h5py.Dataset) and _PATCH_KEY.match(key):
            patch_sets.append((key, item))
    if len(patch_sets) != 2:
        raise ValueError(
            f"{path}: expected exactly two patch datasets named '<h>_<w>' (e.g. '32_32' and "
            f"'160_160'), found {sorted(key for key, _ in patch_sets) or 'none'} among root keys "
            f"{sorted(handle.keys())}"
        )
    for key, dataset in patch_sets:
        match = _PATCH_KEY.match(key)
        assert match is not None
        named = (int(match.group(1)), int(match.group(2)))
        if dataset.ndim != 4 or dataset.shape[1] != 1:
            raise ValueError(
                f"{path}: dataset '{key}' has shape {dataset.shape}; expected (N, 1, h, w)"
            )
        if tuple(dataset.shape[2:]) != named:
            raise ValueError(
                f"{path}: dataset '{key}' holds patches of {dataset.shape[2:]} cells, not {named}"
            )
        if not np.issubdtype(dataset.dtype, np.number):
            raise ValueError(f"{path}: dataset '{key}' is {dataset.dtype}, not numeric")
    patch_sets.sort(key=lambda item: item[1].shape[2] * item[1].shape[3])
    (lowres_key, lowres), (highres_key, highres) = patch_sets
    if lowres.shape[0] != highres.shape[0]:
        raise ValueError(
            f"{path}: '{lowres_key}' holds {lowres.shape[0]} patches but '{highres_key}' holds "
            f"{highres.shape[0]}"
        )
    (h, w), (big_h, big_w) = lowres.shape[2:], highres.shape[2:]
    if big_h % h or big_w % w or big_h // h != big_w // w or big_h == h:
        raise ValueError(
            f"{path}: patch sizes {h}x{w} and {big_h}x{big_w} are not related by one integer "
            "scale >= 2"
        )
    shape_scale = big_h // h
    count = int(lowres.shape[0])
    has_windows = SOURCE_WINDOWS_KEY in handle
    if has_windows:
        windows = handle[SOURCE_WINDOWS_KEY]
        if not isinstance(windows, h5py.Dataset) or windows.shape != (count, 5):
            shape = getattr(windows, "shape", "a group")
            raise ValueError(f"{path}: '{SOURCE_WINDOWS_KEY}' is {shape}, expected ({count}, 5)")
    return PairLayout(
        path=path,
        lowres_key=lowres_key,
        highres_key=highres_key,
        count=count,
        lowres_shape=(int(h), int(w)),
        highres_shape=(int(big_h), int(big_w)),
        has_source_windows=has_windows,
        metadata=_read_metadata(handle, path, shape_scale),
    )


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise ValueError(f"{path}: no such pair file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None


def inspect_pair_file(path: str | os.PathLike[str]) -> PairLayout:
    """Validate a pair file (ours or a published one) and describe it, without loading patches.

    Raises ValueError naming the file when it is not HDF5, does not hold exactly two
    ``<h>_<w>`` datasets of shape (N,1,h,w), their counts differ, or their sizes are not related
    by one integer scale.
    """
    file_path = Path(path)
    with _open_h5(file_path) as handle:
        return _layout_of(handle, file_path)


def read_pair_file(path: str | os.PathLike[str]) -> PairFile:
    """Read a whole pair file into memory as float32 (see :func:`inspect_pair_file`).

    Works for files written by :class:`PairWriter` and for the published MindEarth files, which
    have no attributes: their scale comes from the patch sizes and their normalisation is
    ``IDENTITY`` (a warning is logged, because metrics then stay in normalised units).
    """
    file_path = Path(path)
    with _open_h5(file_path) as handle:
        layout = _layout_of(handle, file_path)
        lowres = np.asarray(handle[layout.lowres_key][...], dtype=np.float32)
        highres = np.asarray(handle[layout.highres_key][...], dtype=np.float32)
        windows = (
            np.asarray(handle[SOURCE_WINDOWS_KEY][...], dtype=np.int64)
            if layout.has_source_windows
            else None
        )
    return PairFile(layout=layout, lowres=lowres, highres=highres, source_windows=windows)
