"""Figures as a user sees them: pictures on disk, panels, colour scales, labels and errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import comparison_cases
import matplotlib.image
import numpy as np
import pytest
from comparison_cases import SCALE, Case, assert_one_line_error, make_case, run
from conftest import DEM_TEST, write_metrics_csv
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from demsr import plot
from demsr.comparison import read_comparison
from demsr.train import METRIC_FIELDS

LIDAR = DEM_TEST / "lidar_pkg_1m.tif"  # 1 m UTM 15N, 400 x 400

# the rasters shared with the comparison tests (comparison_cases)
geographic = comparison_cases.geographic


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
