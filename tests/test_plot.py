"""Figures as a user sees them: pictures on disk, panels, colour scales, labels and errors."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner, Result
from conftest import DEM_TEST, write_metrics_csv, write_untrained_checkpoint
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from demsr import plot
from demsr.cli import main
from demsr.comparison import read_comparison
from demsr.io import read_raster, write_geotiff
from demsr.prepare import degrade
from demsr.train import METRIC_FIELDS

JACKSBORO = DEM_TEST / "mpl_jacksboro_3s.tif"  # 3" geographic, 344 x 403
LIDAR = DEM_TEST / "lidar_pkg_1m.tif"  # 1 m UTM 15N, 400 x 400
SCALE = 5


def run(*args: object) -> Result:
    return CliRunner().invoke(main, ["-q", *(str(a) for a in args)])


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demsr: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@dataclass
class Case:
    """Rasters as demsr degrade and demsr predict leave them, and the arrays behind them."""

    lowres_tif: Path
    truth_tif: Path  # the full raster: larger than the prediction (cropped to whole blocks)
    prediction_tif: Path
    lowres: np.ndarray
    truth: np.ndarray  # cropped to the prediction's grid
    prediction: np.ndarray
    transform: Affine  # of the high-res grid
    crs: object


def make_case(source: Path, folder: Path, noise_m: float, hole: bool) -> Case:
    raster = read_raster(source)
    rows, cols = (raster.shape[0] // SCALE) * SCALE, (raster.shape[1] // SCALE) * SCALE
    truth = raster.data[:rows, :cols]
    lowres = degrade(truth, SCALE)
    rng = np.random.default_rng(0)
    prediction = truth + rng.normal(0.0, noise_m, truth.shape).astype(np.float32)
    if hole:  # nodata in the prediction, e.g. where the input had none
        prediction[10:30, 20:60] = np.nan
    folder.mkdir(parents=True, exist_ok=True)
    lowres_tif, prediction_tif = folder / "lowres.tif", folder / "prediction.tif"
    write_geotiff(lowres_tif, lowres, raster.transform @ Affine.scale(SCALE), raster.crs)
    write_geotiff(prediction_tif, prediction, raster.transform, raster.crs)
    return Case(
        lowres_tif,
        source,
        prediction_tif,
        lowres,
        truth,
        prediction,
        raster.transform,
        raster.crs,
    )


@pytest.fixture(scope="module")
def geographic(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(JACKSBORO, tmp_path_factory.mktemp("geographic"), noise_m=4.0, hole=True)


@pytest.fixture(scope="module")
def projected(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return make_case(LIDAR, tmp_path_factory.mktemp("projected"), noise_m=0.3, hole=False)


def panels(figure: Figure) -> list[Axes]:
    return [ax for ax in figure.axes if ax.images]


def colourbars(figure: Figure, label: str) -> list[Axes]:
    return [ax for ax in figure.axes if ax.get_label() == "<colorbar>" and ax.get_ylabel() == label]


def assert_pixel_size(picture: np.ndarray, rows: float, cols: float) -> None:
    """The picture is the figure's size in inches times its dpi (within a rounding pixel)."""
    assert abs(picture.shape[0] - rows) <= 1 and abs(picture.shape[1] - cols) <= 1, picture.shape


def rmse_in_title(ax: Axes) -> float:
    match = re.search(r"RMSE ([0-9.]+) m", ax.get_title())
    assert match, ax.get_title()
    return float(match.group(1))


def independent_rmse(prediction: np.ndarray, truth: np.ndarray) -> float:
    errors = (prediction.astype(np.float64) - truth.astype(np.float64)).ravel()
    errors = errors[~np.isnan(errors)]
    return math.sqrt(float(np.mean(errors**2)))


# -- comparison figure ------------------------------------------------------------------------


def test_compare_writes_a_picture_of_the_figure_size(geographic: Case, tmp_path: Path) -> None:
    output = tmp_path / "compare.png"
    result = run(
        "plot", "compare",
        "--lowres", geographic.lowres_tif,
        "--truth", geographic.truth_tif,
        "--prediction", geographic.prediction_tif,
        "--baseline", "bicubic",
        "-o", output,
        "--dpi", 60,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(output)
    picture = matplotlib.image.imread(output)
    # the same figure from the library gives the expected size: inches x dpi
    comparison = read_comparison(
        geographic.lowres_tif,
        geographic.truth_tif,
        geographic.prediction_tif,
        baselines={"bicubic": None},
    )
    figure = plot.plot_comparison(
        comparison.lowres,
        comparison.truth,
        comparison.prediction,
        baselines=comparison.baselines,
        transform=comparison.transform,
        crs=comparison.crs,
    )
    width_in, height_in = figure.get_size_inches()
    assert_pixel_size(picture, height_in * 60, width_in * 60)
    assert picture[..., :3].std() > 0.1  # not blank
    assert not list(tmp_path.glob(".*part"))


def test_comparison_panels_scales_and_labels_on_a_geographic_grid(geographic: Case) -> None:
    comparison = read_comparison(
        geographic.lowres_tif,
        geographic.truth_tif,
        geographic.prediction_tif,
        baselines={"bicubic": None},
    )
    # the truth raster (344 x 403) is read over the prediction's 340 x 400 cells
    np.testing.assert_array_equal(comparison.truth, geographic.truth)
    assert comparison.scale == SCALE and comparison.transform == geographic.transform
    figure = plot.plot_comparison(
        comparison.lowres,
        comparison.truth,
        comparison.prediction,
        baselines=comparison.baselines,
        transform=comparison.transform,
        crs=comparison.crs,
        title="Jacksboro",
    )
    # low-res, truth, DEM-SRNet, bicubic, and the two error panels, each with a colourbar
    assert len(panels(figure)) == 6
    elevation_bars = colourbars(figure, "elevation (m)")
    error_bars = colourbars(figure, "error (m)")
    assert len(elevation_bars) == 4 and len(error_bars) == 2

    # one elevation scale for all: the truth's 1st..99th percentiles
    expected = np.nanpercentile(geographic.truth, [1, 99])
    for bar in elevation_bars:
        np.testing.assert_allclose(bar.get_ylim(), expected, rtol=1e-6)
    # one symmetric error scale for all
    limits = {bar.get_ylim() for bar in error_bars}
    assert len(limits) == 1
    low, high = limits.pop()
    assert high > 0 and low == pytest.approx(-high)

    by_label = {ax.get_label(): ax for ax in panels(figure)}
    model_error = by_label["error: DEM-SRNet"]
    assert rmse_in_title(model_error) == pytest.approx(
        independent_rmse(geographic.prediction, geographic.truth), abs=0.006
    )
    bicubic_error = by_label["error: bicubic"]
    assert rmse_in_title(bicubic_error) > rmse_in_title(model_error)  # noise of 4 m beats it

    lowres_panel = by_label['elevation: low-res input 15"']
    truth_panel = by_label['elevation: truth 3"']
    left, top = geographic.transform.c, geographic.transform.f
    right, bottom = geographic.transform @ (400, 340)
    for ax in (lowres_panel, truth_panel, model_error):
        assert ax.get_xlim() == pytest.approx((left, right))
        assert ax.get_ylim() == pytest.approx((bottom, top))
    assert bicubic_error.get_xlabel() == "longitude (degrees)"  # the bottom row
    assert "latitude" in lowres_panel.get_ylabel()

    # nodata in the prediction is grey, in its elevation and its error panel
    shown = by_label["elevation: DEM-SRNet"].images[0].get_array()
    assert shown.shape == (340, 400, 4)
    np.testing.assert_allclose(shown[10:30, 20:60], np.broadcast_to(plot.NODATA_COLOR, (20, 40, 4)))
    assert np.isfinite(shown).all()
    error_shown = model_error.images[0].get_array()
    assert error_shown.mask[10:30, 20:60].all() and not error_shown.mask[40:, :].any()
    # the elevation panels are the colour map blended with a hillshade
    truth_rgba = truth_panel.images[0].get_array()
    plain = colormaps[plot.ELEVATION_CMAP](Normalize(*expected)(geographic.truth))
    assert np.abs(truth_rgba[..., :3] - plain[..., :3]).mean() > 0.02


def test_comparison_on_a_projected_grid_and_in_pixels(projected: Case) -> None:
    figure = plot.plot_comparison(
        projected.lowres,
        projected.truth,
        projected.prediction,
        transform=projected.transform,
        crs=projected.crs,
    )
    assert len(panels(figure)) == 4
    assert len(colourbars(figure, "elevation (m)")) == 3
    assert len(colourbars(figure, "error (m)")) == 1
    error = next(ax for ax in panels(figure) if ax.get_label().startswith("error"))
    assert error.get_xlabel() == "easting (m)"
    assert any(ax.get_ylabel() == "northing (m)" for ax in panels(figure))
    assert error.get_xlim() == pytest.approx((429252.31, 429252.31 + 400), abs=0.01)
    assert rmse_in_title(error) == pytest.approx(
        independent_rmse(projected.prediction, projected.truth), abs=0.006
    )
    assert "truth 1 m" in [ax.get_title() for ax in panels(figure)]

    in_pixels = plot.plot_comparison(projected.lowres, projected.truth, projected.prediction)
    error = next(ax for ax in panels(in_pixels) if ax.get_label().startswith("error"))
    assert "column" in error.get_xlabel() and error.get_xlim() == (0, 400)


def test_large_grids_are_averaged_for_display_not_for_the_rmse(geographic: Case) -> None:
    figure = plot.plot_comparison(
        geographic.lowres,
        geographic.truth,
        geographic.prediction,
        transform=geographic.transform,
        crs=geographic.crs,
        max_pixels=100,
    )
    for ax in panels(figure):
        assert max(ax.images[0].get_array().shape[:2]) <= 100
    error = next(ax for ax in panels(figure) if ax.get_label().startswith("error"))
    assert "means of 4 x 4 cells" in error.get_title()
    assert rmse_in_title(error) == pytest.approx(
        independent_rmse(geographic.prediction, geographic.truth), abs=0.006
    )
    left, top = geographic.transform.c, geographic.transform.f
    right, bottom = geographic.transform @ (400, 340)
    assert error.get_xlim() == pytest.approx((left, right))  # not the padded blocks
    assert error.get_ylim() == pytest.approx((bottom, top))

    # by default, about one cell per pixel: at 40 dpi a 4.2-inch panel is 168 pixels wide
    small = plot.plot_comparison(geographic.lowres, geographic.truth, geographic.prediction, dpi=40)
    truth_shown = next(ax for ax in panels(small) if ax.get_title() == "truth")
    assert truth_shown.images[0].get_array().shape[:2] == (114, 134)  # 3 x 3 means


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


def test_compare_refuses_an_existing_output_unless_overwrite(
    geographic: Case, tmp_path: Path
) -> None:
    output = tmp_path / "compare.png"
    output.write_bytes(b"mine")
    args = [
        "plot", "compare",
        "--lowres", geographic.lowres_tif,
        "--truth", geographic.truth_tif,
        "--prediction", geographic.prediction_tif,
        "-o", output,
        "--dpi", 30,
    ]  # fmt: skip
    assert_one_line_error(run(*args), str(output), "already exists")
    assert output.read_bytes() == b"mine"
    result = run(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(output).shape[2] in (3, 4)


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


def test_plot_comparison_rejects_arrays_of_different_grids() -> None:
    truth = np.zeros((10, 10), np.float32)
    with pytest.raises(ValueError, match="not the low-res grid"):
        plot.plot_comparison(np.zeros((3, 3)), truth, truth)
    with pytest.raises(ValueError, match="differs from the truth"):
        plot.plot_comparison(np.zeros((2, 2)), truth, truth[:, :5])


# -- training curves --------------------------------------------------------------------------


def write_metrics(path: Path, epochs: int, best: set[int]) -> None:
    rows = [
        {
            "epoch": epoch,
            "global_step": 100 * epoch,
            "train_loss": 1e-3 / epoch,
            "valid_loss": 1.2e-3 / epoch + (5e-4 if epoch not in best else 0),
            "valid_rmse_m": 30.0 / epoch + (10 if epoch not in best else 0),
            "learning_rate": 1e-4 * 0.95 ** (epoch - 1),
            "epoch_seconds": 12.5,
            "is_best": int(epoch in best),
        }
        for epoch in range(1, epochs + 1)
    ]
    write_metrics_csv(path, rows)


def test_training_curves(tmp_path: Path) -> None:
    write_metrics(tmp_path / "metrics.csv", epochs=7, best={1, 2, 4})
    figure = plot.plot_training_curves(tmp_path)  # the run folder
    loss, rmse_ax, rate = figure.axes
    assert loss.get_yscale() == "log" and rate.get_yscale() == "log"
    assert [len(line.get_xdata()) for line in loss.get_lines()] == [7, 7]
    assert len(rate.get_lines()[0].get_xdata()) == 7
    assert "RMSE (m)" in rmse_ax.get_ylabel()
    curve, best = rmse_ax.get_lines()[:2]
    assert len(curve.get_xdata()) == 7
    assert list(best.get_xdata()) == [4] and list(best.get_ydata()) == [7.5]
    assert "best: epoch 4, 7.50 m" in [t.get_text() for t in rmse_ax.get_legend().get_texts()]
    assert rate.get_xlabel() == "epoch"

    output = tmp_path / "curves.png"
    result = run("plot", "curves", tmp_path / "metrics.csv", "-o", output, "--dpi", 50)
    assert result.exit_code == 0, result.output
    picture = matplotlib.image.imread(output)
    width_in, height_in = figure.get_size_inches()
    assert_pixel_size(picture, height_in * 50, width_in * 50)
    assert picture[..., :3].std() > 0.05


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "empty file"),
        ("epoch,train_loss\n1,0.1\n", "missing columns: valid_loss"),
        (",".join(METRIC_FIELDS) + "\n", "holds no epochs"),
        (",".join(METRIC_FIELDS) + "\n1,100,abc,0.1,3,1e-4,2,1\n", "line 2: train_loss"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a readable CSV"),
    ],
)
def test_training_curves_refuse_bad_csv(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "metrics.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        plot.plot_training_curves(path)
    assert str(path) in str(error.value)
    output = tmp_path / "curves.png"
    assert_one_line_error(run("plot", "curves", tmp_path, "-o", output), str(path), message)
    assert not output.exists()


# -- saving -----------------------------------------------------------------------------------


def test_save_figure_formats_and_refusals(tmp_path: Path) -> None:
    figure = Figure(figsize=(2, 1), dpi=40)
    figure.add_subplot().plot([0, 1], [1, 0])
    written = plot.save_figure(figure, tmp_path / "plain")
    assert written == tmp_path / "plain.png"
    assert_pixel_size(matplotlib.image.imread(written), 40, 80)
    assert plot.save_figure(figure, tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(FileExistsError, match="f.pdf: already exists"):
        plot.save_figure(figure, tmp_path / "f.pdf")
    plot.save_figure(figure, tmp_path / "f.pdf", overwrite=True, dpi=20)
    with pytest.raises(ValueError, match="unknown picture format 'docx'"):
        plot.save_figure(figure, tmp_path / "f.docx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot.save_figure(figure, tmp_path / "missing" / "f.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "plain.png"]


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
