"""Writing pair files in the published HDF5 layout (:mod:`demsr.datasets.pair_file`):
:class:`PairWriter` appends pairs with bounded memory, :func:`write_pairs` writes them at once."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from demsr.datasets.pair_file import SOURCE_WINDOWS_KEY, PairMetadata, patch_key
from demsr.io import atomic_path

_CHUNK_BYTES = 1 << 20  # about 1 MiB per chunk: h5py's default chunk cache holds one


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
