"""Training pairs: on disk (the published HDF5 layout) and as normalised tensors, or drawn as
random windows from rasters at every step (:class:`RasterWindowDataset`)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from demsr import __version__
from demsr.io import atomic_path

if TYPE_CHECKING:  # demsr.degradation imports demsr.prepare, which imports this module
    from demsr.degradation import DegradationModel

_log = logging.getLogger(__name__)


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
_CHUNK_BYTES = 1 << 20  # about 1 MiB per chunk: h5py's default chunk cache holds one


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


class _LayoutFacts:
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
class PairFile(_LayoutFacts):
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


class PairWriter:
    """Append (low-res, high-res) pairs to one pair file; the file appears only when complete.

    Use as a context manager. Patches go into resizable, chunked (about 1 MiB per chunk),
    compressed datasets, so a split of any size is written with bounded memory. On an exception
    inside the ``with`` block the temporary file is removed and nothing appears at ``path``.
    An existing ``path`` is refused unless ``overwrite=True``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        lowres_patch_px: int | tuple[int, int],
        metadata: PairMetadata,
        *,
        overwrite: bool = False,
        compression: str | None = "gzip",
    ) -> None:
        self.path = Path(path)
        if isinstance(lowres_patch_px, int):
            lowres_patch_px = (lowres_patch_px, lowres_patch_px)
        self.lowres_shape = (int(lowres_patch_px[0]), int(lowres_patch_px[1]))
        if min(self.lowres_shape) < 1:
            raise ValueError(f"lowres_patch_px must be >= 1, got {lowres_patch_px}")
        if metadata.scale < 2:
            raise ValueError(f"scale must be >= 2, got {metadata.scale}")
        self.highres_shape = (
            self.lowres_shape[0] * metadata.scale,
            self.lowres_shape[1] * metadata.scale,
        )
        self.metadata = metadata
        self.overwrite = overwrite
        self.compression = compression
        self.count = 0
        self._stack: contextlib.ExitStack | None = None
        self._handle: h5py.File | None = None

    @property
    def lowres_key(self) -> str:
        return patch_key(*self.lowres_shape)

    @property
    def highres_key(self) -> str:
        return patch_key(*self.highres_shape)

    def __enter__(self) -> PairWriter:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stack = contextlib.ExitStack()
        try:
            tmp = stack.enter_context(atomic_path(self.path))  # it sets the usual mode
            handle = stack.enter_context(h5py.File(tmp, "w"))
            self._create(handle)
        except BaseException:
            stack.close()
            raise
        self._stack, self._handle = stack, handle
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        stack, self._stack, self._handle = self._stack, None, None
        if stack is not None:
            # h5py closes first, then atomic_path renames on success or deletes on error.
            stack.__exit__(exc_type, exc, traceback)

    def _create(self, handle: h5py.File) -> None:
        for key, (rows, cols) in (
            (self.lowres_key, self.lowres_shape),
            (self.highres_key, self.highres_shape),
        ):
            chunk = max(1, _CHUNK_BYTES // (rows * cols * 4))
            handle.create_dataset(
                key,
                shape=(0, 1, rows, cols),
                maxshape=(None, 1, rows, cols),
                dtype=np.float32,
                chunks=(chunk, 1, rows, cols),
                compression=self.compression,
                shuffle=self.compression is not None,
            )
        handle.create_dataset(
            SOURCE_WINDOWS_KEY, shape=(0, 5), maxshape=(None, 5), dtype=np.int64, chunks=(4096, 5)
        )
        meta = self.metadata
        string = h5py.string_dtype()
        handle.attrs["scale"] = int(meta.scale)
        handle.attrs["elevation_offset_m"] = float(meta.normalisation.offset_m)
        handle.attrs["elevation_scale_m"] = float(meta.normalisation.scale_m)
        handle.attrs["source_files"] = np.array(list(meta.source_files), dtype=string)
        handle.attrs["source_crs"] = np.array(list(meta.source_crs), dtype=string)
        handle.attrs["split"] = meta.split
        if meta.seed is not None:
            handle.attrs["seed"] = int(meta.seed)
        handle.attrs["prepare_options"] = json.dumps(meta.prepare_options or {}, sort_keys=True)
        if meta.provenance is not None:
            handle.attrs["provenance"] = json.dumps(meta.provenance, sort_keys=True)
        handle.attrs["demsr_version"] = meta.demsr_version

    def append(
        self, lowres: np.ndarray, highres: np.ndarray, source_windows: np.ndarray | None = None
    ) -> None:
        """Append ``lowres`` (n,1,h,w) and ``highres`` (n,1,H,W), normalised, finite.

        ``source_windows`` is (n,5) int (file index, row_off, col_off, height, width); rows of
        -1 are written when it is None. NaN is refused: pairs with nodata must be dropped
        before they get here.
        """
        if self._handle is None:
            raise RuntimeError("PairWriter.append outside its 'with' block")
        lowres = np.asarray(lowres, dtype=np.float32)
        highres = np.asarray(highres, dtype=np.float32)
        n = lowres.shape[0]
        if lowres.shape[1:] != (1, *self.lowres_shape) or highres.shape != (
            n,
            1,
            *self.highres_shape,
        ):
            raise ValueError(
                f"expected lowres (n,1,{self.lowres_shape[0]},{self.lowres_shape[1]}) and highres "
                f"(n,1,{self.highres_shape[0]},{self.highres_shape[1]}), got {lowres.shape} and "
                f"{highres.shape}"
            )
        if source_windows is None:
            windows = np.full((n, 5), -1, dtype=np.int64)
        else:
            windows = np.asarray(source_windows, dtype=np.int64)
            if windows.shape != (n, 5):
                raise ValueError(f"source_windows must be ({n}, 5), got {windows.shape}")
        if not (np.isfinite(lowres).all() and np.isfinite(highres).all()):
            raise ValueError("pairs must not contain NaN/inf (drop nodata patches first)")
        if n == 0:
            return
        handle = self._handle
        for key, values in (
            (self.lowres_key, lowres),
            (self.highres_key, highres),
            (SOURCE_WINDOWS_KEY, windows),
        ):
            dataset = handle[key]
            dataset.resize(self.count + n, axis=0)
            dataset[self.count : self.count + n] = values
        self.count += n


def write_pairs(
    path: str | os.PathLike[str],
    lowres: np.ndarray,
    highres: np.ndarray,
    metadata: PairMetadata,
    source_windows: np.ndarray | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a whole pair file at once: ``lowres`` (N,1,h,w), ``highres`` (N,1,H,W), normalised."""
    lowres = np.asarray(lowres)
    if lowres.ndim != 4:
        raise ValueError(f"lowres must be (N,1,h,w), got shape {lowres.shape}")
    shape = (int(lowres.shape[2]), int(lowres.shape[3]))
    with PairWriter(path, shape, metadata, overwrite=overwrite) as writer:
        writer.append(lowres, highres, source_windows)
    return Path(path)


# --- Tensors -----------------------------------------------------------------------------------


def dihedral(x: torch.Tensor, variant: int) -> torch.Tensor:
    """One of the 8 symmetries of the square applied to the last two dims of ``x``.

    ``variant`` 0..3 rotates by ``variant`` x 90 degrees; 4..7 flips left-right first. Block
    means commute with all eight, so applying the same variant to a low-res patch and its
    high-res patch keeps the pair consistent.
    """
    if not 0 <= variant < 8:
        raise ValueError(f"variant must be in 0..7, got {variant}")
    if variant >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k=variant % 4, dims=(-2, -1))


def undo_dihedral(x: torch.Tensor, variant: int) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, v), v)`` is ``x``."""
    if not 0 <= variant < 8:
        raise ValueError(f"variant must be in 0..7, got {variant}")
    x = torch.rot90(x, k=-(variant % 4), dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if variant >= 4 else x


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffling (depends on nothing else)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


class ShuffledShardSampler(DistributedSampler[int]):
    """One epoch's shuffled order of a dataset, dealt out to the ranks of a run.

    The order is ``torch.randperm(n, generator=epoch_generator(seed, epoch))``; call
    :meth:`set_epoch` before each epoch. Rank r of N takes its positions r, r+N, r+2N, ...
    (as ``DistributedSampler`` does), so the ranks' k-th batches of b pairs together are
    positions k*N*b .. (k+1)*N*b - 1: the k-th batch of N*b pairs that a single process draws
    from the same order. The last ``n mod N`` positions (at most N-1 pairs) are left out so that
    every rank gets ``n // N`` pairs, hence the same number of steps; the order changes every
    epoch, so other pairs are left out each time. Alone (N = 1) nothing is left out.
    """

    def __init__(self, dataset: Sized, *, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )

    def __iter__(self) -> Iterator[int]:
        count = len(self.dataset)  # type: ignore[arg-type]
        order = torch.randperm(count, generator=epoch_generator(self.seed, self.epoch)).tolist()
        return iter(order[self.rank : self.total_size : self.num_replicas])


class PairDataset(_LayoutFacts, Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(low-res, high-res) float32 tensors (1,h,w) and (1,H,W), normalised, from a pair file.

    The file may be ours or a published one (see :func:`read_pair_file`). By default the whole
    file is loaded into memory (a split of the published size is a few GiB at most); with
    ``in_memory=False`` patches are read on demand (the file is opened lazily in each
    DataLoader worker). ``augment=True`` applies the same flip/rot90 (one of the 8 dihedral
    variants, :meth:`variant`) to both members of a pair; the variant is a function of
    ``seed``, the epoch (:meth:`set_epoch`) and the pair's index only, so it does not depend on
    the order pairs are read in, on which DataLoader worker or torchrun rank reads them, or on
    any global random state. With ``degradation`` (a
    :class:`demsr.degradation.DegradationModel`) the stored low-res patch is replaced by one
    the model makes from the high-res patch (:meth:`degraded`), drawn the same way.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        augment: bool = False,
        in_memory: bool = True,
        seed: int = 0,
        degradation: DegradationModel | None = None,
    ) -> None:
        self.augment = augment
        self.degradation = degradation
        self.seed = seed
        self.epoch = 0
        # The variants of every pair for one (seed, epoch), drawn when first needed.
        self._variants: tuple[tuple[int, int], np.ndarray] | None = None
        self._lowres: np.ndarray | None = None
        self._highres: np.ndarray | None = None
        self._handle: h5py.File | None = None
        if in_memory:
            pairs = read_pair_file(path)
            self.layout = pairs.layout
            self._lowres, self._highres = pairs.lowres, pairs.highres
        else:
            self.layout = inspect_pair_file(path)
        if degradation is not None and not self.metadata.normalisation_known:
            raise ValueError(
                f"{self.path}: records no normalisation (a published file?): a degradation "
                "works in metres and cannot be applied to it"
            )

    @property
    def source_files(self) -> list[str]:
        """Paths of the rasters the patches come from (empty for published files)."""
        return list(self.metadata.source_files)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of epoch ``epoch`` from now on (set it before making the
        epoch's DataLoader: its workers get a copy of the dataset)."""
        self.epoch = epoch

    def variant(self, index: int) -> int:
        """The dihedral variant (0..7, see :func:`dihedral`) that augmentation applies to pair
        ``index`` in the current epoch: element ``index`` of
        ``numpy.random.default_rng([seed, epoch]).integers(8, size=len(self))``, drawn once
        per epoch (a byte per pair)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        key = (self.seed, self.epoch)
        if self._variants is None or self._variants[0] != key:
            # SeedSequence takes non-negative integers; a negative seed maps to its own value.
            rng = np.random.default_rng([self.seed % 2**64, self.epoch % 2**64])
            self._variants = key, rng.integers(8, size=len(self), dtype=np.uint8)
        return int(self._variants[1][index])

    def degraded(self, index: int, highres: np.ndarray) -> np.ndarray:
        """The low-res patch that ``degradation`` makes from pair ``index``'s (1,H,W) normalised
        high-res patch, normalised: drawn from (seed, epoch, index), so the same in every worker
        and rank, and new each epoch."""
        assert self.degradation is not None
        norm = self.normalisation
        rng = np.random.default_rng([self.seed % 2**64, self.epoch % 2**64, index, 0x5EED])
        highres_m = norm.denormalise(highres.astype(np.float64))
        lowres_m = self.degradation.apply(highres_m, self.scale, rng)
        return np.asarray(norm.normalise(lowres_m), dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None  # h5py handles do not pickle; workers reopen the file
        return state

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """The pair at ``index`` as float32 arrays, and whether they are views of the loaded
        file (True) rather than fresh arrays read from disk."""
        if self._lowres is not None and self._highres is not None:
            return self._lowres[index], self._highres[index], True
        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        lowres = self._handle[self.layout.lowres_key][index]
        highres = self._handle[self.layout.highres_key][index]
        return (
            np.asarray(lowres, dtype=np.float32),
            np.asarray(highres, dtype=np.float32),
            False,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} pairs")
        index %= len(self)
        lowres_np, highres_np, shared = self._read(index)
        if self.degradation is not None:
            lowres_np, shared = self.degraded(index, highres_np), False
        lowres, highres = torch.from_numpy(lowres_np), torch.from_numpy(highres_np)
        if self.augment:
            # dihedral returns new tensors, so the loaded patches are never handed out
            variant = self.variant(index)
            lowres = dihedral(lowres, variant).contiguous()
            highres = dihedral(highres, variant).contiguous()
        elif shared:
            # a caller changing a pair in place must not change the loaded file
            lowres, highres = lowres.clone(), highres.clone()
        return lowres, highres


# --- Random windows from rasters -----------------------------------------------------------------

# Makes the low-res input of a training window: (highres_m (H, W) float32 metres, scale, rng)
# -> lowres_m (H/scale, W/scale). The rng is the window's own (see RasterWindowDataset).
LowresMaker = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def block_mean_lowres(highres_m: np.ndarray, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The exact block mean of ``highres_m`` over ``scale`` x ``scale`` cells (``rng`` unused):
    the default :data:`LowresMaker`."""
    from demsr.prepare import degrade  # prepare imports this module

    return degrade(highres_m, scale)


def _raster_name(path: Path) -> str:
    return path.name.split(".", 1)[0]


@dataclass(frozen=True)
class RasterSelection:
    """The rasters of a run drawn from windows: ``train``, ``valid`` and ``heldout`` paths
    (disjoint; held-out rasters are never read)."""

    train: list[Path]
    valid: list[Path]
    heldout: list[Path]


def select_rasters(
    patterns: Sequence[str], heldout: Sequence[str] = (), valid: Sequence[str] = ()
) -> RasterSelection:
    """Split the rasters named by ``patterns`` (files, folders, glob patterns) into training,
    validation and held-out sets.

    ``heldout`` and ``valid`` name rasters by file name without suffix (``srtm3_N56W006``) or
    by path; each must match exactly one of the rasters found (a typo must not let a held-out
    raster into training), and no raster may be in both. ValueError otherwise, or when no
    raster is left to train on.
    """
    from demsr.prepare import collect_rasters  # prepare imports this module

    expanded: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ValueError(f"{pattern}: matches no file")
            expanded.extend(matches)
        else:
            expanded.append(pattern)
    found = collect_rasters(expanded)

    def pick(names: Sequence[str], what: str) -> list[Path]:
        chosen = []
        for name in names:
            matches = [
                path
                for path in found
                if name in (_raster_name(path), path.name) or Path(name).resolve() == path.resolve()
            ]
            if len(matches) != 1:
                raise ValueError(
                    f"{what} raster {name!r} matches {len(matches)} of the {len(found)} rasters "
                    "of data.rasters (name one file, by its name without suffix or its path)"
                )
            chosen.append(matches[0])
        return chosen

    kept_out = pick(heldout, "held-out")
    validation = pick(valid, "validation")
    both = sorted({p.name for p in kept_out} & {p.name for p in validation})
    if both:
        raise ValueError(f"rasters both held out and used for validation: {', '.join(both)}")
    excluded = {p.resolve() for p in (*kept_out, *validation)}
    train = [path for path in found if path.resolve() not in excluded]
    if not train:
        raise ValueError("no raster is left to train on once held-out and validation rasters")
    return RasterSelection(train=train, valid=validation, heldout=kept_out)


def _window_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """Counts of True cells in every ``size`` x ``size`` window of ``mask``, by top-left cell:
    (rows - size + 1, cols - size + 1) int64, from a summed-area table."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


@dataclass(frozen=True)
class WindowDraw:
    """Where a training window came from: raster index, top-left row and column (high-res
    cells), the dihedral variant applied (0 = none) and whether the alternative low-res maker
    made its input."""

    raster: int
    row: int
    col: int
    variant: int
    alternative: bool


class RasterWindowDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(low-res, high-res) float32 tensors (1,h,w) and (1,h*scale,w*scale) in metres, drawn at
    random from rasters held in memory.

    Item ``index`` of epoch ``epoch`` (:meth:`set_epoch`) is drawn from
    ``numpy.random.default_rng([seed, epoch, index])`` alone, so it does not depend on the
    order items are read in, on the DataLoader worker or torchrun rank that reads it, or on any
    global random state: a run resumed at any step sees the same windows as an uninterrupted
    one. The draw: a raster, with probability proportional to the number of valid windows it
    holds; a valid window in it, uniformly (rejection sampling on a precomputed map); with
    ``augment``, one of the 8 flips/rotations (:func:`dihedral`); then the low-res input,
    ``make_lowres(highres_m, scale, rng)``, or with probability ``alternative_probability``
    ``alternative_lowres(...)`` (e.g. a degradation fitted on real products).

    A window is valid when it holds no nodata and at most ``max_sea_fraction`` of its cells at
    exactly ``sea_level_m`` (SRTM writes the sea as a flat 0 m). Rasters without any valid
    window are left out with a warning; ValueError when none is left. Rasters are read whole
    at construction (float32, about 5.8 MB per 1201 x 1201 tile), so drawing costs a copy and
    a block mean.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        lowres_patch_px: int,
        scale: int,
        length: int,
        seed: int = 0,
        augment: bool = False,
        make_lowres: LowresMaker = block_mean_lowres,
        alternative_lowres: LowresMaker | None = None,
        alternative_probability: float = 0.0,
        max_sea_fraction: float = 0.0,
        sea_level_m: float = 0.0,
    ) -> None:
        from demsr.io import read_raster

        if lowres_patch_px < 1 or scale < 2 or length < 1:
            raise ValueError(
                f"need lowres_patch_px >= 1, scale >= 2 and length >= 1, got {lowres_patch_px}, "
                f"{scale}, {length}"
            )
        if not 0.0 <= alternative_probability <= 1.0:
            raise ValueError(
                f"alternative_probability must be in [0, 1], got {alternative_probability}"
            )
        if alternative_probability > 0 and alternative_lowres is None:
            raise ValueError("alternative_probability > 0 needs an alternative_lowres maker")
        self.scale = scale
        self.lowres_patch_px = lowres_patch_px
        self.highres_patch_px = lowres_patch_px * scale
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.augment = augment
        self.make_lowres = make_lowres
        self.alternative_lowres = alternative_lowres
        self.alternative_probability = alternative_probability
        self.normalisation = IDENTITY  # items are in metres
        self.units = "m"
        size = self.highres_patch_px
        self.paths: list[Path] = []
        self._data: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        counts: list[int] = []
        for item in paths:
            path = Path(item)
            data = read_raster(path).data
            if min(data.shape) < size:
                _log.warning("%s: smaller than one %d-cell window; left out", path, size)
                continue
            nodata = _window_sums(~np.isfinite(data), size)
            sea = _window_sums(data == sea_level_m, size)
            valid = (nodata == 0) & (sea <= max_sea_fraction * size * size)
            count = int(valid.sum())
            if count == 0:
                _log.warning("%s: no %d-cell window without nodata or sea; left out", path, size)
                continue
            self.paths.append(path)
            self._data.append(data)
            self._valid.append(valid)
            counts.append(count)
        if not self.paths:
            raise ValueError(
                f"no raster of {len(paths)} holds a valid {size} x {size} window (nodata and "
                "sea are refused)"
            )
        self.valid_windows = np.asarray(counts, dtype=np.int64)
        self._weights = self.valid_windows / self.valid_windows.sum()

    @property
    def path(self) -> Path:
        """The first raster (for messages)."""
        return self.paths[0]

    @property
    def source_files(self) -> list[str]:
        return [str(path) for path in self.paths]

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Draw the windows of epoch ``epoch`` from now on (set it before making the epoch's
        DataLoader: its workers get a copy of the dataset)."""
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % 2**64, self.epoch % 2**64, index])

    def draw(self, index: int) -> tuple[WindowDraw, np.random.Generator]:
        """Where item ``index`` of the current epoch comes from, and its generator in the
        state the low-res maker receives it."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} windows")
        rng = self._rng(index)
        raster = int(rng.choice(len(self.paths), p=self._weights))
        valid = self._valid[raster]
        rows, cols = valid.shape
        while True:  # the raster holds a valid window: this ends
            candidate_rows = rng.integers(rows, size=64)
            candidate_cols = rng.integers(cols, size=64)
            hits = np.flatnonzero(valid[candidate_rows, candidate_cols])
            if hits.size:
                row, col = int(candidate_rows[hits[0]]), int(candidate_cols[hits[0]])
                break
        variant = int(rng.integers(8)) if self.augment else 0
        alternative = bool(rng.random() < self.alternative_probability)
        return WindowDraw(raster, row, col, variant, alternative), rng

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        where, rng = self.draw(index)
        size = self.highres_patch_px
        rows, cols = slice(where.row, where.row + size), slice(where.col, where.col + size)
        window = torch.from_numpy(self._data[where.raster][rows, cols])
        # A copy: the raster held in memory is never handed out.
        highres = np.array(dihedral(window, where.variant).numpy(), dtype=np.float32, copy=True)
        maker = self.alternative_lowres if where.alternative else self.make_lowres
        assert maker is not None
        lowres = np.asarray(maker(highres, self.scale, rng), dtype=np.float32)
        expected = (self.lowres_patch_px, self.lowres_patch_px)
        if lowres.shape != expected:
            raise ValueError(f"the low-res maker returned shape {lowres.shape}, not {expected}")
        return torch.from_numpy(np.ascontiguousarray(lowres))[None], torch.from_numpy(highres)[None]
