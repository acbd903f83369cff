"""The grid value type: refining, coarsening and windows keep bounds and cells aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.windows import Window

from demsr.grid import Grid

cell_sizes = st.sampled_from([1 / 240, 1 / 1200, 30.0, 90.0, 0.25])
origins = st.tuples(st.floats(-170, 170, allow_nan=False), st.floats(-80, 80, allow_nan=False))


def grids(rows: st.SearchStrategy[int], cols: st.SearchStrategy[int]) -> st.SearchStrategy[Grid]:
    return st.builds(
        lambda r, c, size, origin: Grid(
            (r, c), Affine(size, 0, origin[0], 0, -size, origin[1]), "EPSG:4326"
        ),
        rows,
        cols,
        cell_sizes,
        origins,
    )


@settings(max_examples=60, deadline=None)
@given(grids(st.integers(1, 300), st.integers(1, 300)), st.integers(1, 8))
def test_refining_keeps_the_bounds_and_coarsening_undoes_it(grid: Grid, scale: int) -> None:
    fine = grid.refine(scale)
    assert fine.shape == (grid.shape[0] * scale, grid.shape[1] * scale)
    assert fine.bounds == pytest.approx(
        grid.bounds, rel=0, abs=1e-9 * max(1, *map(abs, grid.bounds))
    )
    assert fine.transform.a == pytest.approx(grid.transform.a / scale)
    back = fine.coarsen(scale)
    assert back.shape == grid.shape and back.crs == grid.crs
    assert back.transform.almost_equals(grid.transform, precision=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    grids(st.integers(4, 200), st.integers(4, 200)),
    st.integers(1, 6),
    st.data(),
)
def test_a_window_of_the_refined_grid_is_the_refined_window(
    grid: Grid, scale: int, data: st.DataObject
) -> None:
    rows, cols = grid.shape
    row = data.draw(st.integers(0, rows - 1))
    col = data.draw(st.integers(0, cols - 1))
    height = data.draw(st.integers(1, rows - row))
    width = data.draw(st.integers(1, cols - col))
    coarse = grid.window(Window(col, row, width, height)).refine(scale)
    fine = grid.refine(scale).window(
        Window(col * scale, row * scale, width * scale, height * scale)
    )
    assert coarse.shape == fine.shape
    assert coarse.transform.almost_equals(fine.transform, precision=1e-9)


def test_a_grid_is_read_from_a_raster_and_refined_as_predict_refines_it(tmp_path: Path) -> None:
    # the GeoTIFF's own grid, and the x5 grid demsr predict gives it
    path = tmp_path / "in.tif"
    transform = Affine(1 / 240, 0, -5.0, 0, -1 / 240, 57.0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=7,
        height=4,
        count=1,
        dtype="float32",
        crs="EPSG:4326",
        transform=transform,
    ) as dst:
        dst.write(np.zeros((1, 4, 7), np.float32))
    with rasterio.open(path) as src:
        grid = Grid.of(src)
    assert grid.shape == (4, 7) and grid.crs == "EPSG:4326"
    fine = grid.refine(5)
    assert fine.shape == (20, 35)
    assert fine.transform.a == pytest.approx(1 / 1200) and fine.bounds == pytest.approx(grid.bounds)
    with pytest.raises(ValueError, match="positive integer"):
        grid.refine(0)


@settings(max_examples=60, deadline=None)
@given(grids(st.integers(1, 300), st.integers(1, 300)), st.integers(1, 6))
def test_cell_centres_lie_half_a_cell_inside_and_refined_ones_average_to_them(
    grid: Grid, scale: int
) -> None:
    # the coordinates NetCDF and Zarr products write, one per column and row
    xs, ys = grid.cell_centres()
    rows, cols = grid.shape
    assert xs.shape == (cols,) and ys.shape == (rows,)
    west, south, east, north = grid.bounds
    size = grid.transform.a
    tolerance = 1e-9 * max(1, *map(abs, grid.bounds))
    assert xs[0] == pytest.approx(west + size / 2, abs=tolerance)
    assert xs[-1] == pytest.approx(east - size / 2, abs=tolerance)
    assert ys[0] == pytest.approx(north - size / 2, abs=tolerance)
    assert ys[-1] == pytest.approx(south + size / 2, abs=tolerance)
    for col in (0, cols - 1):
        x, y = grid.transform @ (col + 0.5, rows - 0.5)
        assert (xs[col], ys[-1]) == pytest.approx((x, y), abs=tolerance)
    # the centres of a coarse cell's scale x scale fine cells average to its centre
    fine_xs, fine_ys = grid.refine(scale).cell_centres()
    np.testing.assert_allclose(fine_xs.reshape(cols, scale).mean(axis=1), xs, atol=tolerance)
    np.testing.assert_allclose(fine_ys.reshape(rows, scale).mean(axis=1), ys, atol=tolerance)


@pytest.mark.parametrize(
    ("crs", "geographic", "units"),
    [
        ("EPSG:4326", True, "degrees"),
        (CRS.from_epsg(32615), False, "m"),  # UTM 15N, as rasterio reads it
        ("EPSG:2227", False, "US survey foot"),  # California zone 3, in feet
        (None, False, "m"),  # unknown: coordinates taken as metres
    ],
)
def test_a_grid_says_whether_its_coordinates_are_degrees_and_their_unit(
    crs: object, geographic: bool, units: str
) -> None:
    grid = Grid((3, 4), Affine(30.0, 0, 500_000.0, 0, -30.0, 4_000_000.0), crs)
    assert grid.geographic is geographic
    assert grid.coordinate_units == units
