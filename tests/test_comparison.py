"""Comparison inputs checked and read: areas by bounds, grids that do not match, baselines,
and the prediction made by a checkpoint on the degraded truth."""

from __future__ import annotations

from pathlib import Path

import comparison_cases
import matplotlib.image
import numpy as np
import pytest
from affine import Affine
from comparison_cases import SCALE, Case, assert_one_line_error, run
from conftest import DEM_TEST, write_untrained_checkpoint

from demsr.comparison import read_comparison
from demsr.io import write_geotiff

# the rasters shared with the plot tests (comparison_cases)
geographic = comparison_cases.geographic


def test_compare_bounds_plot_an_area(geographic: Case, tmp_path: Path) -> None:
    # an area in degrees, widened to whole 15" cells
    left, top = geographic.transform.c, geographic.transform.f
    cell = geographic.transform.a * SCALE
    bounds = (left + 10.5 * cell, top - 30.2 * cell, left + 40.1 * cell, top - 20 * cell)
    comparison = read_comparison(
        geographic.lowres_tif, geographic.truth_tif, geographic.prediction_tif, bounds=bounds
    )
    assert comparison.lowres.shape == (11, 31)
    np.testing.assert_array_equal(comparison.lowres, geographic.lowres[20:31, 10:41])
    np.testing.assert_array_equal(comparison.truth, geographic.truth[100:155, 50:205])
    assert comparison.transform == geographic.transform @ Affine.translation(50, 100)

    output = tmp_path / "area.png"
    result = run(
        "plot", "compare",
        "--lowres", geographic.lowres_tif,
        "--truth", geographic.truth_tif,
        "--prediction", geographic.prediction_tif,
        "--bounds", *bounds,
        "-o", output,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert output.is_file()

    result = run(
        "plot", "compare",
        "--lowres", geographic.lowres_tif,
        "--truth", geographic.truth_tif,
        "--prediction", geographic.prediction_tif,
        "--bounds", 0, 0, 1, 1,
        "-o", tmp_path / "nowhere.png",
    )  # fmt: skip
    assert_one_line_error(result, "do not overlap")
    assert not (tmp_path / "nowhere.png").exists()


def write_variant(case: Case, path: Path, which: str) -> None:
    """A raster that does not fit the case's grids."""
    if which == "prediction_short":  # one column of low-res cells missing
        write_geotiff(path, case.prediction[:, :-SCALE], case.transform, case.crs)
    elif which == "prediction_shifted":  # half a cell off
        shifted = case.transform @ Affine.translation(0.5, 0)
        write_geotiff(path, case.prediction, shifted, case.crs)
    elif which == "prediction_other_crs":
        write_geotiff(path, case.prediction, case.transform, "EPSG:32616")
    elif which == "lowres_not_integer":  # cells 2.5 times the prediction's
        lowres = np.zeros((136, 160), np.float32)
        write_geotiff(path, lowres, case.transform @ Affine.scale(2.5), case.crs)
    elif which == "truth_smaller":
        write_geotiff(path, case.truth[:-10], case.transform, case.crs)
    else:  # truth on cells of another size
        write_geotiff(path, case.truth[::2, ::2], case.transform @ Affine.scale(2), case.crs)


@pytest.mark.parametrize(
    ("which", "role", "message"),
    [
        ("prediction_short", "prediction", "not the 340 x 400"),
        ("prediction_shifted", "prediction", "offset"),
        ("prediction_other_crs", "prediction", "CRS"),
        ("lowres_not_integer", "lowres", "not one integer scale"),
        ("truth_smaller", "truth", "does not cover"),
        ("truth_coarser", "truth", "differ from"),
    ],
)
def test_compare_refuses_grids_that_do_not_match(
    geographic: Case, tmp_path: Path, which: str, role: str, message: str
) -> None:
    paths = {
        "lowres": geographic.lowres_tif,
        "truth": geographic.truth_tif,
        "prediction": geographic.prediction_tif,
    }
    paths[role] = tmp_path / f"{which}.tif"
    write_variant(geographic, paths[role], which)
    output = tmp_path / "out.png"
    result = run(
        "plot", "compare",
        "--lowres", paths["lowres"],
        "--truth", paths["truth"],
        "--prediction", paths["prediction"],
        "-o", output,
    )  # fmt: skip
    assert_one_line_error(result, message)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir()] == [f"{which}.tif"]


def test_compare_baseline_options(geographic: Case, tmp_path: Path) -> None:
    common = [
        "plot", "compare",
        "--lowres", geographic.lowres_tif,
        "--truth", geographic.truth_tif,
        "--prediction", geographic.prediction_tif,
        "--dpi", 30,
    ]  # fmt: skip
    # a baseline raster on disk: the prediction again, under another name
    output = tmp_path / "baseline.svg"
    result = run(*common, "--baseline", f"copy={geographic.prediction_tif}", "-o", output)
    assert result.exit_code == 0, result.output
    assert output.read_text().lstrip().startswith("<?xml")

    result = run(*common, "--baseline", "magic", "-o", tmp_path / "a.png")
    assert_one_line_error(result, "unknown baseline 'magic'", "bicubic")
    result = run(*common, "--baseline", "=x.tif", "-o", tmp_path / "b.png")
    assert result.exit_code == 2 and "NAME=PATH" in result.stderr
    result = run(*common, "--baseline", f"copy={geographic.lowres_tif}", "-o", tmp_path / "c.png")
    assert_one_line_error(result, "not the 340 x 400")
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.svg"]


def test_compare_runs_a_checkpoint_on_the_degraded_truth(tmp_path: Path) -> None:
    from demsr.scaling import ElevationScaling

    checkpoint = write_untrained_checkpoint(tmp_path / "m.safetensors", scaling=ElevationScaling())
    truth = DEM_TEST / "mpl_jacksboro_3s.tif"
    output = tmp_path / "fig.png"
    result = run(
        "plot",
        "compare",
        "--checkpoint",
        checkpoint,
        "--truth",
        truth,
        "--baseline",
        "bicubic",
        "--device",
        "cpu",
        "--dpi",
        50,
        "-o",
        output,
    )
    assert result.exit_code == 0, result.output
    picture = matplotlib.image.imread(output)
    assert picture.shape[0] > picture.shape[1] and picture.std() > 0.05  # 3 rows of 2 panels
    both = run(
        "plot",
        "compare",
        "--checkpoint",
        checkpoint,
        "--prediction",
        truth,
        "--truth",
        truth,
        "-o",
        tmp_path / "x.png",
    )
    assert both.exit_code != 0 and "not both" in both.output
    assert not (tmp_path / "x.png").exists()
