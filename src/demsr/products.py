"""Real coarse products (GEBCO, SRTM15+) paired with a fine DEM on the product's exact sub-grid.

A real 15" product is not the block mean of a 3" DEM: other sources, other processing, another
grid registration. To pair (or score against) one, the fine DEM is put onto the product's
exact x ``scale`` sub-grid (:func:`fine_on_product_grid`), the one step that ``demsr prepare
--lowres`` and ``demsr evaluate --lowres`` share:

- the sub-grid: the product's transform with cells ``scale`` times smaller, over the product
  cells that the fine DEM covers entirely (a window of the product, whole cells only);
- the fine DEM's heights are converted to the product's vertical datum
  (:func:`demsr.datum.convert_heights`, bundled EGM96 geoid) on its own grid;
- then warped onto the sub-grid with GDAL (rasterio): ``average`` (area-weighted: fractional
  cells count by their covered area) when the fine DEM is finer than the sub-grid (1" -> 3",
  30 m -> 3"), ``bilinear`` when it has the sub-grid's resolution and only the registration
  differs (SRTM's 3" posts sit half a cell off GEBCO's sub-grid), ``nearest`` (a copy) when
  it already is the sub-grid, reprojecting when the CRSs differ. Cells of the fine DEM that
  are nodata, or exactly 0 m (SRTM and most land DEMs write the sea as a flat 0 m: no truth
  there), make every sub-grid cell they touch nodata (NaN).

Checks, each a one-line ValueError naming the files: no CRS (a NetCDF grid without a grid
mapping but with latitude/longitude coordinates, as GMT writes them, is geographic by
convention: read as EPSG:4326, with a warning), rasters that do not overlap, an overlap smaller
than ``min_lowres_px`` product cells, a fine DEM coarser than the sub-grid, and (same CRS) a
product whose cell is not the fine cell times the scale (or a whole multiple of it, when the
fine DEM is aggregated).

Kept whole: one job, putting a fine DEM onto a real product's sub-grid; the pairs cut from it
(:class:`ProductSource`, :func:`prepare_product_pairs`) are that grid read patch by patch.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window

from demsr.datum import convert_heights
from demsr.grid import Grid
from demsr.io import Raster, RasterError, RasterReader, open_raster, same_crs
from demsr.metrics import cell_sizes_m
from demsr.prepare import PrepareOptions, PrepareReport, prepare_pairs

log = logging.getLogger(__name__)

# Fraction of a cell by which grid sizes and edges may differ and still count as equal.
_TOLERANCE = 0.01
# A fine DEM whose cells are below this fraction of the sub-grid's is aggregated (``average``);
# up to 1 + _COARSER_TOLERANCE it is resampled (``bilinear``); above it is refused as coarser.
_AGGREGATE_BELOW = 0.75
_COARSER_TOLERANCE = 0.05
# A sub-grid cell is kept when at least this fraction of its warped weight is valid fine data.
_VALID_WEIGHT = 1.0 - 1e-4
# Fine cells read around the sub-grid on each side (the warp kernels' reach).
_MARGIN_PX = 3
# Coast: sub-grid cells within this many product cells of the 0 m line.
COAST_DISTANCE_PX = 2


@dataclass
class SubgridPair:
    """A product window and the fine DEM on its exact x ``scale`` sub-grid, metres, NaN nodata.

    ``lowres`` is (h, w): the product's cells as read (its own nodata as NaN); ``highres`` is
    (h * scale, w * scale): the fine DEM warped onto the sub-grid, NaN where the fine DEM has
    no data or writes 0 m (sea), and where the product cell above it has no data.
    ``transform`` is the sub-grid's (``lowres_transform`` the product window's), in ``crs``.
    ``resampling`` is ``"average"`` or ``"bilinear"``; ``provenance`` says where both came from.
    """

    lowres: np.ndarray
    highres: np.ndarray
    transform: Affine
    crs: CRS
    scale: int
    resampling: str
    window: Window  # the product cells used, in the product's grid
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def lowres_transform(self) -> Affine:
        return self.transform @ Affine.scale(self.scale)

    def coast(self) -> np.ndarray:
        """(h * scale, w * scale) bool: sub-grid cells within :data:`COAST_DISTANCE_PX` product
        cells of the 0 m line (see :func:`coast_mask`)."""
        return coast_mask(self.lowres, self.scale)


def coast_mask(
    lowres_m: np.ndarray, scale: int, distance_px: int = COAST_DISTANCE_PX
) -> np.ndarray:
    """High-res cells whose low-res cell is within ``distance_px`` cells (a square
    neighbourhood) of a low-res cell on the other side of 0 m (above vs at or below).

    ``lowres_m`` is (..., h, w) metres (NaN: neither side); returns (..., h*scale, w*scale) bool.
    """
    from scipy import ndimage

    values = np.asarray(lowres_m, dtype=np.float64)
    size = (1,) * (values.ndim - 2) + (2 * distance_px + 1, 2 * distance_px + 1)
    land = np.nan_to_num(values, nan=-np.inf) > 0
    sea = np.nan_to_num(values, nan=np.inf) <= 0
    near_land = ndimage.maximum_filter(land, size=size, mode="nearest")
    near_sea = ndimage.maximum_filter(sea, size=size, mode="nearest")
    coast = near_land & near_sea
    return np.repeat(np.repeat(coast, scale, axis=-2), scale, axis=-1)


def _declares_crs(reader: RasterReader) -> bool:
    """False for a NetCDF/Zarr grid whose CRS demsr inferred from lon/lat coordinate names."""
    layout = getattr(reader, "layout", None)
    if layout is None or layout.kind not in ("netcdf", "zarr"):
        return True
    import xarray as xr

    engine = "zarr" if layout.kind == "zarr" else None
    with xr.open_dataset(reader.path, engine=engine, decode_times=False) as dataset:
        variable = dataset[layout.variable]
        mapping = variable.attrs.get("grid_mapping", variable.encoding.get("grid_mapping"))
        return mapping is not None or any(
            "crs_wkt" in dataset[name].attrs or "spatial_ref" in dataset[name].attrs
            for name in dataset.variables
        )


_WARNED_NO_CRS: set[str] = set()  # products already warned about, once per process


def open_product(path: str | os.PathLike[str], band: int = 1) -> RasterReader:
    """Open a coarse product; a RasterError for one without a CRS. A NetCDF grid without a grid
    mapping is read as geographic (EPSG:4326), with a warning saying so."""
    reader = open_raster(path, band=band)
    try:
        if reader.crs is None:
            raise RasterError(
                f"{reader.path}: the product has no CRS; assign one (e.g. gdal_edit.py -a_srs "
                "EPSG:4326) so that the fine DEM can be placed on its grid"
            )
        if reader.path not in _WARNED_NO_CRS and not _declares_crs(reader):
            _WARNED_NO_CRS.add(reader.path)
            log.warning(
                "%s: declares no CRS; its latitude/longitude coordinates make it geographic by "
                "convention (GMT and CF grids): read as EPSG:4326 (WGS84)",
                reader.path,
            )
    except BaseException:
        reader.close()
        raise
    return reader


def _mean_cell_m(transform: Affine, crs: Any, row: float) -> float:
    """Geometric mean of a cell's east-west and north-south sizes in metres at ``row``."""
    dx, dy = cell_sizes_m(transform, crs, 1, int(row))
    return float(math.sqrt(dx[0] * dy[0]))


def choose_resampling(
    product: RasterReader, fine: RasterReader, scale: int, window: Window | None = None
) -> str:
    """``"average"``, ``"bilinear"`` or ``"nearest"`` for putting ``fine`` on ``product``'s
    sub-grid.

    Same CRS: the product cell must be the fine cell times ``scale`` times a whole number k
    (k > 1: average; k = 1: bilinear, or nearest, i.e. a plain copy, when the fine cells are
    already the sub-grid's), else a ValueError; k < 1 is a fine DEM coarser than the sub-grid.
    Different CRSs: by the cells' sizes in metres at the window's centre.
    """
    target = Grid.of(product).refine(scale).transform
    coarser = (
        f"{fine.path}: its cells are coarser than the x{scale} sub-grid of {product.path}; the "
        "fine DEM must be at least as fine as the target"
    )
    if same_crs(product.crs, fine.crs):
        ratio_x = abs(product.transform.a / fine.transform.a) / scale
        ratio_y = abs(product.transform.e / fine.transform.e) / scale
        if min(ratio_x, ratio_y) < 1 - _TOLERANCE:
            raise ValueError(
                f"{coarser} ({abs(fine.transform.a):.6g} vs {abs(target.a):.6g} CRS units)"
            )
        multiple = round(ratio_x)
        if max(abs(ratio_x - multiple), abs(ratio_y - multiple)) > _TOLERANCE * multiple:
            raise ValueError(
                f"{product.path}: its cells ({abs(product.transform.a):.6g}) are "
                f"{ratio_x * scale:.4g} times the fine DEM's ({abs(fine.transform.a):.6g}), not "
                f"the scale {scale} (or a whole multiple of it); check --scale and the rasters"
            )
        if multiple > 1:
            return "average"
        col = (fine.transform.c - target.c) / fine.transform.a
        row = (fine.transform.f - target.f) / fine.transform.e
        aligned = max(abs(col - round(col)), abs(row - round(row))) < _TOLERANCE
        return "nearest" if aligned else "bilinear"
    row = 0.0 if window is None else (window.row_off + window.height / 2) * scale
    target_m = _mean_cell_m(target, product.crs, row)
    fine_row = fine.shape[0] / 2
    fine_m = _mean_cell_m(fine.transform, fine.crs, fine_row)
    ratio = fine_m / target_m
    if ratio > 1 + _COARSER_TOLERANCE:
        raise ValueError(f"{coarser} ({fine_m:.1f} m vs {target_m:.1f} m cells)")
    return "average" if ratio < _AGGREGATE_BELOW else "bilinear"


def overlap_window(
    product: RasterReader, fine: RasterReader, resampling: str, min_lowres_px: int = 1
) -> Window:
    """The product cells that ``fine`` covers entirely, as a window of the product. ValueError
    when there are none or fewer than ``min_lowres_px`` along either axis. (With bilinear at the
    sub-grid's own resolution, sub-grid cell centres then lie within the fine cell centres.)"""
    left, bottom, right, top = fine.bounds
    if not same_crs(product.crs, fine.crs):
        left, bottom, right, top = transform_bounds(
            fine.crs, product.crs, left, bottom, right, top, densify_pts=21
        )
    tf = product.transform
    col_start = max(0, math.ceil((left - tf.c) / tf.a - _TOLERANCE))
    col_stop = min(product.shape[1], math.floor((right - tf.c) / tf.a + _TOLERANCE))
    row_start = max(0, math.ceil((top - tf.f) / tf.e - _TOLERANCE))
    row_stop = min(product.shape[0], math.floor((bottom - tf.f) / tf.e + _TOLERANCE))
    rows, cols = row_stop - row_start, col_stop - col_start
    if rows <= 0 or cols <= 0:
        raise ValueError(
            f"{fine.path} and {product.path} do not overlap (no product cell lies inside the "
            "fine DEM)"
        )
    if min(rows, cols) < min_lowres_px:
        raise ValueError(
            f"{fine.path} covers only {rows} x {cols} cells of {product.path}: smaller than one "
            f"{min_lowres_px}-cell patch"
        )
    return Window(col_start, row_start, cols, rows)


def _fine_window(fine: RasterReader, bounds: tuple[float, float, float, float]) -> Window:
    """The fine cells covering ``bounds`` (in the fine CRS) plus a margin, clipped."""
    left, bottom, right, top = bounds
    tf = fine.transform
    col_start = max(0, math.floor((left - tf.c) / tf.a) - _MARGIN_PX)
    col_stop = min(fine.shape[1], math.ceil((right - tf.c) / tf.a) + _MARGIN_PX)
    row_start = max(0, math.floor((top - tf.f) / tf.e) - _MARGIN_PX)
    row_stop = min(fine.shape[0], math.ceil((bottom - tf.f) / tf.e) + _MARGIN_PX)
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)


def _warp(
    values: np.ndarray,
    src_transform: Affine,
    src_crs: Any,
    dst_shape: tuple[int, int],
    dst_transform: Affine,
    dst_crs: Any,
    resampling: str,
) -> np.ndarray:
    destination = np.full(dst_shape, np.nan, np.float64)
    reproject(
        values,
        destination,
        src_transform=src_transform,
        src_crs=src_crs,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        src_nodata=np.nan,
        dst_nodata=np.nan,
        resampling=Resampling[resampling],
    )
    return destination


def fine_on_product_grid(
    fine_path: str | os.PathLike[str],
    product_path: str | os.PathLike[str],
    scale: int,
    *,
    band: int = 1,
    fine_datum: str = "egm96",
    product_datum: str = "egm96",
    min_lowres_px: int = 1,
    mask_zero: bool = True,
) -> SubgridPair:
    """Put band ``band`` of ``fine_path`` onto the exact x ``scale`` sub-grid of
    ``product_path`` (see the module docstring) over the product cells the fine DEM covers;
    ``mask_zero`` treats the fine DEM's exact 0 m cells (sea) as nodata. Heights are converted
    from ``fine_datum`` to ``product_datum`` (``egm96`` or ``wgs84``) first."""
    with open_product(product_path) as product, open_raster(fine_path, band=band) as fine:
        if fine.crs is None:
            raise RasterError(f"{fine.path}: the fine DEM has no CRS; assign one first")
        resampling = choose_resampling(product, fine, scale)
        window = overlap_window(product, fine, resampling, min_lowres_px)
        if not same_crs(product.crs, fine.crs):  # the size check at the overlap's latitude
            resampling = choose_resampling(product, fine, scale, window)
        lowres = product.read(window).astype(np.float64)
        target_grid = Grid.of(product).window(window).refine(scale)
        lowres_transform = product.window_transform(window)
        target_transform, shape = target_grid.transform, target_grid.shape
        bounds = (
            lowres_transform.c,
            lowres_transform.f + lowres_transform.e * window.height,
            lowres_transform.c + lowres_transform.a * window.width,
            lowres_transform.f,
        )
        if not same_crs(product.crs, fine.crs):
            bounds = transform_bounds(product.crs, fine.crs, *bounds, densify_pts=21)
        fine_window = _fine_window(fine, bounds)
        heights = fine.read(fine_window).astype(np.float64)
        fine_transform = fine.window_transform(fine_window)
        fine_crs, product_crs = fine.crs, product.crs
        assert product_crs is not None  # open_product refuses a product without one
        zero_cells = int(np.count_nonzero(heights == 0)) if mask_zero else 0
        if mask_zero:
            heights[heights == 0] = np.nan
        if fine_datum != product_datum:
            heights = convert_heights(heights, fine_transform, fine_crs, fine_datum, product_datum)
        provenance = {
            "product": str(Path(product.path).resolve()),
            "product_crs": product_crs.to_string(),
            "product_window": [int(window.row_off), int(window.col_off), *shape],
            "product_cell_size": [abs(product.transform.a), abs(product.transform.e)],
            "product_datum": product_datum,
            "product_dtype": product.layout.source_dtype,
            "fine": str(Path(fine.path).resolve()),
            "fine_crs": fine_crs.to_string(),
            "fine_cell_size": [abs(fine.transform.a), abs(fine.transform.e)],
            "fine_datum": fine_datum,
            "resampling": resampling,
            "zero_m_masked": bool(mask_zero),
            "subgrid_transform": list(tuple(target_transform)[:6]),
        }
    valid = np.isfinite(heights)
    filled = np.where(valid, heights, np.nan)
    highres = _warp(
        filled, fine_transform, fine_crs, shape, target_transform, product_crs, resampling
    )
    weight = _warp(
        valid.astype(np.float64),
        fine_transform,
        fine_crs,
        shape,
        target_transform,
        product_crs,
        resampling,
    )
    highres[~(np.nan_to_num(weight) >= _VALID_WEIGHT)] = np.nan
    product_nodata = np.repeat(np.repeat(~np.isfinite(lowres), scale, axis=0), scale, axis=1)
    highres[product_nodata] = np.nan
    log.info(
        "%s on the x%d sub-grid of %s: %d x %d product cells, %s, %.1f%% of sub-grid cells "
        "valid (%d fine cells at 0 m masked as sea)",
        Path(fine_path).name,
        scale,
        Path(product_path).name,
        int(window.height),
        int(window.width),
        resampling,
        100.0 * float(np.isfinite(highres).mean()),
        zero_cells,
    )
    return SubgridPair(
        lowres=lowres.astype(np.float32),
        highres=highres.astype(np.float32),
        transform=target_transform,
        crs=product_crs,
        scale=scale,
        resampling=resampling,
        window=window,
        provenance=provenance,
    )


class ProductSource:
    """:class:`demsr.prepare.PairSource` for a real coarse product: each fine DEM put onto the
    product's sub-grid (:func:`fine_on_product_grid`), the product's own cells as low-res.

    The high-res raster it hands out is the sub-grid (NaN where the fine DEM has no data, 0 m,
    or the product cell has no data, so such patches are dropped as nodata); patch origins are
    cells of that sub-grid. The last file's sub-grid is kept, so the two passes of prepare read
    each file once or twice, never all at once.
    """

    def __init__(
        self,
        product_path: str | os.PathLike[str],
        scale: int,
        *,
        band: int = 1,
        fine_datum: str = "egm96",
        product_datum: str = "egm96",
        min_lowres_px: int = 1,
    ) -> None:
        self.product_path = Path(product_path)
        self.scale = scale
        self.band = band
        self.fine_datum = fine_datum
        self.product_datum = product_datum
        self.min_lowres_px = min_lowres_px
        self.pairs: dict[str, dict[str, Any]] = {}  # provenance of each fine DEM, by path
        self._last: tuple[str, SubgridPair] | None = None

    def subgrid(self, path: Path) -> SubgridPair:
        key = str(Path(path).resolve())
        if self._last is None or self._last[0] != key:
            pair = fine_on_product_grid(
                path,
                self.product_path,
                self.scale,
                band=self.band,
                fine_datum=self.fine_datum,
                product_datum=self.product_datum,
                min_lowres_px=self.min_lowres_px,
            )
            self.pairs[key] = pair.provenance
            self._last = (key, pair)
        return self._last[1]

    def highres(self, path: Path, band: int) -> Raster:
        pair = self.subgrid(path)
        return Raster(data=pair.highres, transform=pair.transform, crs=pair.crs, path=str(path))

    def lowres_m(
        self, raster: Raster, highres_m: np.ndarray, origins: np.ndarray, scale: int
    ) -> np.ndarray:
        pair = self.subgrid(Path(raster.path))
        rows, cols = highres_m.shape[-2] // scale, highres_m.shape[-1] // scale
        return np.stack(
            [
                pair.lowres[r // scale : r // scale + rows, c // scale : c // scale + cols]
                for r, c in origins
            ]
        )[:, None]

    def provenance(self) -> dict[str, Any]:
        return {
            "lowres": "product",
            "product": str(self.product_path.resolve()),
            "fine_datum": self.fine_datum,
            "product_datum": self.product_datum,
            "pairs": [self.pairs[key] for key in sorted(self.pairs)],
        }


def prepare_product_pairs(
    fine_paths: list[Path],
    product_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: PrepareOptions,
    *,
    fine_datum: str = "egm96",
    product_datum: str = "egm96",
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """:func:`demsr.prepare.prepare_pairs` with a real coarse product as the low-res member.

    Each fine DEM in ``fine_paths`` is put onto the product's x ``options.scale`` sub-grid
    (:func:`fine_on_product_grid`) and cut into patches there; the low-res patch is the product's
    cells above it. ``stride_px`` and ``split_block_px`` must be multiples of the scale (patches
    start on product cell edges). Of several fine DEMs, those that do not cover one patch of the
    product are left out with a warning; with one, or when none does, it is a ValueError.
    """
    scale = options.scale
    for name in ("effective_stride_px", "effective_split_block_px"):
        value = getattr(options, name)
        if value % scale:
            option = name.removeprefix("effective_")
            raise ValueError(
                f"{option} {value} is not a multiple of the scale {scale}: patches must start on "
                "the product's cell edges"
            )
    kept: list[Path] = []
    errors: list[str] = []
    for path in fine_paths:
        try:
            with (
                open_product(product_path) as product,
                open_raster(path, band=options.band) as fine,
            ):
                if fine.crs is None:
                    raise RasterError(f"{fine.path}: the fine DEM has no CRS; assign one first")
                resampling = choose_resampling(product, fine, scale)
                overlap_window(product, fine, resampling, options.lowres_patch_px)
        except ValueError as exc:
            if len(fine_paths) == 1:
                raise
            errors.append(str(exc))
            log.warning("%s; left out", exc)
            continue
        kept.append(path)
    if not kept:
        raise ValueError(f"no fine DEM covers one patch of {product_path} ({errors[0]})")
    source = ProductSource(
        product_path,
        scale,
        band=options.band,
        fine_datum=fine_datum,
        product_datum=product_datum,
        min_lowres_px=options.lowres_patch_px,
    )
    return prepare_pairs(
        kept, out_dir, options, overwrite=overwrite, progress=progress, source=source
    )
