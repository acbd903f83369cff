"""Vertical units: a DEM in feet (GDAL band unit, CF ``units``) is read as metres, predicted in
metres and written back in feet, tagged; an unknown unit is refused in one line; an elevation
error on a file in feet does not suggest a nodata value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner
from conftest import write_untrained_checkpoint

from demsr.cli import main
from demsr.io import Raster, RasterError, open_raster, read_raster, write_geotiff
from demsr.predict import predict_raster

SOURCE = "landlab_west_bijou_1s.tif"  # 67 x 129 cells, EPSG:4326, 1690..1807 m
FOOT = 0.3048
US_FOOT = 1200 / 3937


@pytest.fixture(scope="module")
def metres(dem_test_dir: Path) -> Raster:
    return read_raster(dem_test_dir / SOURCE)


def write_in_unit(path: Path, metres: Raster, unit: str, metres_per_unit: float) -> Path:
    write_geotiff(path, metres.data / metres_per_unit, metres.transform, metres.crs)
    with rasterio.open(path, "r+") as dst:
        dst.units = (unit,)
    return path


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("ft", FOOT), ("foot", FOOT), ("US survey foot", US_FOOT), ("metre", 1.0), ("", 1.0)],
)
def test_a_geotiff_in_feet_is_read_as_metres(
    metres: Raster, tmp_path: Path, unit: str, factor: float
) -> None:
    path = write_in_unit(tmp_path / "dem.tif", metres, unit, factor)
    with open_raster(path) as reader:
        assert reader.metres_per_unit == pytest.approx(factor)
        np.testing.assert_allclose(reader.read(), metres.data, rtol=1e-6)


def test_a_netcdf_in_feet_is_read_as_metres(metres: Raster, tmp_path: Path) -> None:
    rows, cols = metres.data.shape
    lat = metres.transform.f + metres.transform.e * (np.arange(rows) + 0.5)
    lon = metres.transform.c + metres.transform.a * (np.arange(cols) + 0.5)
    feet = xr.DataArray(metres.data / FOOT, dims=("lat", "lon"), attrs={"units": "ft"})
    xr.Dataset({"elevation": feet}, coords={"lat": lat, "lon": lon}).to_netcdf(tmp_path / "d.nc")
    np.testing.assert_allclose(read_raster(tmp_path / "d.nc").data, metres.data, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".tif", ".nc"])
def test_a_prediction_in_feet_is_the_metre_prediction_written_in_feet(
    metres: Raster, tmp_path: Path, suffix: str
) -> None:
    checkpoint = write_untrained_checkpoint(tmp_path / "model.safetensors", channels=4)
    in_metres = write_geotiff(tmp_path / "m.tif", metres.data, metres.transform, metres.crs)
    in_feet = write_in_unit(tmp_path / "ft.tif", metres, "ft", FOOT)
    options = {"device": "cpu", "progress": False, "precision": "fp32"}
    reference = predict_raster(checkpoint, in_metres, tmp_path / f"metres{suffix}", **options)
    output = predict_raster(checkpoint, in_feet, tmp_path / f"ft_out{suffix}", **options)
    if suffix == ".tif":
        with rasterio.open(output) as dst:
            assert dst.units == ("ft",) and dst.tags()["units"] == "ft"
            values = dst.read(1)
    else:
        with xr.open_dataset(output) as dataset:
            assert dataset["elevation"].attrs["units"] == "ft"
            values = dataset["elevation"].values
    expected = read_raster(reference).data / FOOT
    np.testing.assert_allclose(values, expected, rtol=1e-5)
    # Read back, the product is in metres again, like the prediction from metres.
    np.testing.assert_allclose(read_raster(output).data, read_raster(reference).data, rtol=1e-5)


def test_an_unknown_vertical_unit_is_refused_in_one_line(metres: Raster, tmp_path: Path) -> None:
    path = write_in_unit(tmp_path / "dem.tif", metres, "degC", 1.0)
    result = CliRunner().invoke(main, ["degrade", str(path), str(tmp_path / "out.tif")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"demsr: error: {path}: elevations are declared in 'degC', not a vertical unit demsr "
        "converts (metres, feet, US survey feet, km, cm, mm)"
    ]
    assert not (tmp_path / "out.tif").exists()


def test_an_implausible_height_in_feet_names_the_unit_and_suggests_no_nodata(
    metres: Raster, tmp_path: Path
) -> None:
    high = metres.data.copy()
    high[3, 4] = 40_000 * FOOT  # 40,000 ft: no mountain is that high
    source = Raster(high, metres.transform, metres.crs)
    path = write_in_unit(tmp_path / "dem.tif", source, "ft", FOOT)
    with pytest.raises(RasterError) as error, open_raster(path) as reader:
        reader.read()
    message = str(error.value)
    assert "holds 40000 ft = 12192 m, not an elevation" in message
    assert "nodata" not in message
