"""Bad input, clear errors: the catalogue of RELIABILITY.md, each case driven through the command
line. Every case ends with a non-zero exit, one line on stderr naming the file (or setting) and
the problem, no traceback, and nothing new in the output folder but what the case documents
(a resumable partial after Ctrl-C or a full disk). Also: Ctrl-C, a full disk and a crash while
writing leave no half-written product; files handed in are never run (pickles, zip paths,
shell syntax in config values)."""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import rasterio
import torch
import xarray as xr
from affine import Affine
from click.testing import CliRunner
from conftest import REPO, set_options, tiny_overrides, write_untrained_checkpoint

import demsr.checkpoint
import demsr.io
from demsr.checkpoint import load_checkpoint, save_checkpoint
from demsr.cli import main
from demsr.io import read_raster, write_geotiff
from demsr.model import DEMSRNet, ModelConfig, SuperResolver
from demsr.scaling import ElevationScaling

SOURCE = "landlab_west_bijou_1s.tif"  # 67 x 129 cells, EPSG:4326, float32, 1690..1807 m
TILES = ["--tile-px", "32"]  # 3 x 5 = 15 tiles of the source


class Payload:
    """Unpickling this touches ``marker``: the proof that a pickle was (never) run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.marker.touch, ())


@dataclass(frozen=True)
class Inputs:
    """The files the cases hand to demsr (made once per module)."""

    root: Path
    checkpoint: Path
    marker: Path  # created if any pickle were ever unpickled

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _profile(raster: Any, dtype: str = "float32") -> dict[str, Any]:
    rows, cols = raster.shape
    return {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": 1,
        "dtype": dtype,
        "crs": raster.crs,
        "transform": raster.transform,
    }


def _pair_file(
    path: Path, lowres: tuple[str, tuple[int, ...]], highres: tuple[str, tuple[int, ...]]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        for key, shape in (lowres, highres):
            handle[key] = np.random.default_rng(0).random(shape, dtype=np.float32)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, dem_test_dir: Path) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    marker = root / "PICKLE-WAS-RUN"
    raster = read_raster(dem_test_dir / SOURCE)
    data, transform, crs = raster.data, raster.transform, raster.crs
    write_geotiff(root / "dem.tif", data, transform, crs)
    write_geotiff(root / "no_crs.tif", data, transform, None)
    write_geotiff(root / "rotated.tif", data, transform @ Affine.rotation(10), crs)
    write_geotiff(root / "all_nodata.tif", np.full_like(data, np.nan), transform, crs, -9999.0)
    write_geotiff(root / "tiny.tif", data[:3, :3], transform, crs)
    write_geotiff(root / "one_cell.tif", np.full((1, 1), 5.0), transform, crs)
    beyond = Affine(transform.a, 0.0, transform.c, 0.0, transform.e, 95.0)  # north of the pole
    write_geotiff(root / "beyond_pole.tif", data, beyond, crs)
    with rasterio.open(root / "three_bands.tif", "w", **{**_profile(raster), "count": 3}) as dst:
        dst.write(np.stack([data, data + 100, data + 200]))
    with rasterio.open(root / "uint8.tif", "w", **_profile(raster, "uint8")) as dst:
        dst.write(np.clip(data - 1650, 0, 255).astype(np.uint8), 1)  # an image, not a DEM
    (root / "notes.tif").write_text("these are not elevations\n")
    (root / "empty.tif").write_bytes(b"")
    whole = (root / "dem.tif").read_bytes()
    (root / "truncated.tif").write_bytes(whole[: len(whole) // 3])
    (root / "folder.tif").mkdir()
    huge = data.copy()
    huge[5:8, 5:8] = 1e30
    with rasterio.open(root / "huge_values.tif", "w", **_profile(raster)) as dst:
        dst.write(huge, 1)  # float32 without a nodata value
    sentinel = np.rint(data).astype(np.int16)
    sentinel[:, :10] = -32767
    with rasterio.open(root / "int16_sentinel.tif", "w", **_profile(raster, "int16")) as dst:
        dst.write(sentinel, 1)  # int16 without a nodata value
    lat = np.arange(20) * 0.1 + 0.05
    grids = {name: (("lat", "lon"), data[:20, :20]) for name in ("depth", "height")}
    xr.Dataset(grids, coords={"lat": lat, "lon": lat}).to_netcdf(root / "two_grids.nc")
    with zipfile.ZipFile(root / "escape.zip", "w") as archive:
        archive.writestr("../evil.tif", whole)
    with zipfile.ZipFile(root / "absolute.zip", "w") as archive:
        archive.writestr("/tmp/evil.tif", whole)

    checkpoint = write_untrained_checkpoint(root / "model.safetensors", channels=4)
    for name in ("pickle.safetensors", "pickle.pt", "pickle.ckpt"):
        (root / name).write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    torch.save({"state_dict": Payload(marker)}, root / "torch_save.pt")
    blob = checkpoint.read_bytes()
    (root / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    _edit_header(checkpoint, root / "other_architecture.safetensors", blocks=2)
    torch.manual_seed(0)
    model_x4 = DEMSRNet(ModelConfig(blocks=1, channels=4, scale=4))
    save_checkpoint(root / "x4.safetensors", model_x4, ElevationScaling(scale_m=1000.0))

    _pair_file(root / "keys.h5", ("low", (4, 1, 8, 8)), ("high", (4, 1, 40, 40)))
    _pair_file(root / "shapes.h5", ("8_8", (4, 1, 8, 8)), ("40_40", (4, 1, 38, 38)))
    _pair_file(root / "counts.h5", ("8_8", (4, 1, 8, 8)), ("40_40", (3, 1, 40, 40)))
    _pair_file(root / "ratio.h5", ("8_8", (4, 1, 8, 8)), ("30_30", (4, 1, 30, 30)))
    (root / "bad_key.yaml").write_text("train:\n  epochs: 2\n  epochz: 3\n")
    return Inputs(root, checkpoint, marker)


def _edit_header(source: Path, target: Path, **model: Any) -> None:
    """A copy of a checkpoint whose JSON header claims another architecture."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        header = json.loads((handle.metadata() or {})["demsr"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    header["model"].update(model)
    save_file(tensors, str(target), metadata={"demsr": json.dumps(header)})


@dataclass
class Env:
    """What a case builds its command from: the inputs, an empty output folder, fixtures."""

    inputs: Inputs
    out: Path
    pairs: Path
    monkeypatch: pytest.MonkeyPatch


@dataclass(frozen=True)
class Expect:
    """A command and what it must print: one line holding ``names`` and matching ``problem``;
    ``leaves``: the only new entries of the output folder (relative paths; ``name/``: that
    folder with whatever it holds)."""

    args: list[Any]
    names: str
    problem: str
    exit_code: int = 1
    leaves: tuple[str, ...] = ()


CASES: dict[str, Callable[[Env], Expect]] = {}


def case(function: Callable[[Env], Expect]) -> Callable[[Env], Expect]:
    """Register a catalogue case under its function name (``case_`` dropped, ``_`` -> ``-``)."""
    CASES[function.__name__.removeprefix("case_").replace("_", "-")] = function
    return function


def predict(env: Env, source: Path | str, *extra: Any, output: str = "out.tif") -> list[Any]:
    return [
        "predict",
        env.inputs.checkpoint,
        source,
        env.out / output,
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def predicting(env: Env, name: str, problem: str, *extra: Any) -> Expect:
    source = env.inputs / name
    return Expect(predict(env, source, *extra), str(source), problem)


# -- rasters ---------------------------------------------------------------------------------


@case
def case_missing_file(env: Env) -> Expect:
    return predicting(env, "missing.tif", "no such file")


@case
def case_directory_instead_of_file(env: Env) -> Expect:
    return predicting(env, "folder.tif", "is a directory, not a Zarr store")


@case
def case_not_a_raster(env: Env) -> Expect:
    return predicting(env, "notes.tif", "cannot be read as a raster .*not recognized")


@case
def case_zero_size_file(env: Env) -> Expect:
    return predicting(env, "empty.tif", r"is empty \(0 bytes\)")


@case
def case_truncated_geotiff(env: Env) -> Expect:
    return predicting(env, "truncated.tif", "cannot read rows .*truncated or corrupt")


@case
def case_one_cell_raster(env: Env) -> Expect:
    return predicting(env, "one_cell.tif", r"1 x 1 cells is too small to super-resolve")


@case
def case_latitudes_beyond_the_pole(env: Env) -> Expect:
    return predicting(env, "beyond_pole.tif", r"latitudes run from .* to 95 degrees, beyond \+-90")


@case
def case_no_crs(env: Env) -> Expect:
    return predicting(env, "no_crs.tif", "has no CRS; give it with --crs")


@case
def case_invalid_crs_option(env: Env) -> Expect:
    return predicting(env, "no_crs.tif", "'EPSG:999999', is not valid", "--crs", "EPSG:999999")


@case
def case_crs_option_contradicts_the_file(env: Env) -> Expect:
    return predicting(env, "dem.tif", "has its own CRS .*differs", "--crs", "EPSG:3857")


@case
def case_rotated_transform(env: Env) -> Expect:
    return predicting(env, "rotated.tif", "transform is rotated or not north-up")


@case
def case_all_nodata(env: Env) -> Expect:
    return predicting(env, "all_nodata.tif", "band 1 holds no valid cells")


@case
def case_absurd_value_1e30_without_nodata(env: Env) -> Expect:
    return predicting(
        env, "huge_values.tif", r"holds 1e\+30, not an elevation in metres.*--nodata 1e\+30"
    )


@case
def case_int16_minus_32767_without_nodata(env: Env) -> Expect:
    return predicting(env, "int16_sentinel.tif", "holds -32767, not an elevation in metres")


@case
def case_wrong_band(env: Env) -> Expect:
    return predicting(env, "dem.tif", r"band 2 does not exist \(the file has 1\)", "--band", "2")


@case
def case_netcdf_without_elevation_variable(env: Env) -> Expect:
    return predicting(env, "two_grids.nc", "no 'elevation' variable and several gridded ones")


@case
def case_netcdf_named_variable_missing(env: Env) -> Expect:
    problem = r"no variable 'elevation' \(variables: depth, height\)"
    return predicting(env, "two_grids.nc", problem, "--variable", "elevation")


@case
def case_smaller_than_one_lowres_cell(env: Env) -> Expect:
    source = env.inputs / "tiny.tif"
    args = ["degrade", source, env.out / "coarse.tif", "--scale", "5"]
    return Expect(args, str(source), "3x3 cells is smaller than one 5x5 block")


@case
def case_zip_member_escaping_its_folder(env: Env) -> Expect:
    return predicting(env, "escape.zip", "unsafe member name '../evil.tif'")


@case
def case_zip_member_with_absolute_path(env: Env) -> Expect:
    return predicting(env, "absolute.zip", "unsafe member name '/tmp/evil.tif'")


# -- pair files (HDF5) -----------------------------------------------------------------------


def evaluating(env: Env, data: Path, problem: str, checkpoint: Path | None = None) -> Expect:
    model = checkpoint or env.inputs.checkpoint
    args = ["evaluate", model, data, "--json", env.out / "scores.json", "--no-progress"]
    return Expect(args, str(data), problem)


@case
def case_hdf5_wrong_keys(env: Env) -> Expect:
    return evaluating(env, env.inputs / "keys.h5", r"expected exactly two patch datasets")


@case
def case_hdf5_wrong_shapes(env: Env) -> Expect:
    return evaluating(env, env.inputs / "shapes.h5", r"'40_40' holds patches of \(38, 38\)")


@case
def case_hdf5_lowres_highres_counts_differ(env: Env) -> Expect:
    return evaluating(env, env.inputs / "counts.h5", "'8_8' holds 4 patches but '40_40' holds 3")


@case
def case_scale_does_not_divide_the_patch_size(env: Env) -> Expect:
    problem = "patch sizes 8x8 and 30x30 are not related by one integer scale"
    return evaluating(env, env.inputs / "ratio.h5", problem)


# -- checkpoints -----------------------------------------------------------------------------


@case
def case_checkpoint_missing(env: Env) -> Expect:
    missing = env.inputs / "missing.safetensors"
    args = ["predict", missing, env.inputs / "dem.tif", env.out / "out.tif"]
    return Expect(args, str(missing), "no such checkpoint file")


@case
def case_checkpoint_of_another_architecture(env: Env) -> Expect:
    other = env.inputs / "other_architecture.safetensors"
    args = ["predict", other, env.inputs / "dem.tif", env.out / "out.tif"]
    return Expect(args, str(other), "weights do not match the model config")


@case
def case_checkpoint_of_another_scale(env: Env) -> Expect:
    data = env.pairs / "test" / "test.h5"
    return evaluating(env, data, "the data are x5, the model is x4", env.inputs / "x4.safetensors")


@case
def case_checkpoint_truncated(env: Env) -> Expect:
    truncated = env.inputs / "truncated.safetensors"
    args = ["predict", truncated, env.inputs / "dem.tif", env.out / "out.tif"]
    return Expect(args, str(truncated), "not a complete safetensors file")


@case
def case_pickle_named_safetensors(env: Env) -> Expect:
    path = env.inputs / "pickle.safetensors"
    args = ["predict", path, env.inputs / "dem.tif", env.out / "out.tif"]
    return Expect(args, str(path), "it is a Python pickle .refused: demsr never unpickles")


@case
def case_pickle_named_pt(env: Env) -> Expect:
    path = env.inputs / "pickle.pt"
    expect = evaluating(env, env.pairs / "test" / "test.h5", "it is a Python pickle .refused", path)
    return Expect(expect.args, str(path), expect.problem)


@case
def case_pickle_named_ckpt_as_finetuning_parent(env: Env) -> Expect:
    path = env.inputs / "pickle.ckpt"
    args = ["finetune", path, "--data", env.pairs, "--output-dir", env.out / "run"]
    return Expect(args, str(path), "it is a Python pickle .refused")


@case
def case_torch_save_file(env: Env) -> Expect:
    path = env.inputs / "torch_save.pt"
    args = ["predict", path, env.inputs / "dem.tif", env.out / "out.tif"]
    return Expect(args, str(path), r"a zip archive \(e.g. a PyTorch torch.save file")


@case
def case_pickle_given_to_import_mindearth(env: Env) -> Expect:
    path = env.inputs / "pickle.ckpt"
    args = ["import-mindearth", path, env.out / "imported.safetensors"]
    return Expect(args, str(path), "not a MindSpore checkpoint: it is a Python pickle")


@case
def case_resume_from_truncated_checkpoint(env: Env) -> Expect:
    run = env.out / "run"
    run.mkdir()
    last = run / "last.safetensors"
    shutil.copyfile(env.inputs / "truncated.safetensors", last)
    args = ["train", *set_options(tiny_overrides(env.pairs, run)), "--resume", "--no-progress"]
    return Expect(args, str(last), "not a complete safetensors file")


# -- configs ---------------------------------------------------------------------------------


@case
def case_config_unknown_key(env: Env) -> Expect:
    config = env.inputs / "bad_key.yaml"
    args = ["train", "--config", config, "--output-dir", env.out / "run"]
    return Expect(args, "epochz", "unknown key")


@case
def case_config_ill_typed_override(env: Env) -> Expect:
    args = ["train", "--set", "train.epochs=many", "--output-dir", env.out / "run"]
    return Expect(args, "train.epochs", "many")


@case
def case_config_unknown_override_key(env: Env) -> Expect:
    args = ["train", "--set", "train.epochz=3", "--output-dir", env.out / "run"]
    return Expect(args, "epochz", "unknown")


@case
def case_config_path_with_shell_syntax(env: Env) -> Expect:
    root = f"$(touch {env.inputs.marker}); touch {env.inputs.marker}"
    overrides = tiny_overrides(Path(root), env.out / "run")
    return Expect(["train", *set_options(overrides)], root, "no such pair file")


# -- outputs ---------------------------------------------------------------------------------


@case
def case_output_folder_missing(env: Env) -> Expect:
    args = predict(env, env.inputs / "dem.tif", output="missing/out.tif")
    return Expect(args, str(env.out / "missing"), "no such folder for the output")


@case
def case_output_folder_not_writable(env: Env) -> Expect:
    locked = env.out / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: simulate what the OS tells other users
        real_mkstemp = tempfile.mkstemp

        def refuse(*args: Any, **kwargs: Any) -> Any:
            if Path(kwargs.get("dir") or ".") == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_mkstemp(*args, **kwargs)

        env.monkeypatch.setattr(tempfile, "mkstemp", refuse)
    args = predict(env, env.inputs / "dem.tif", output="locked/out.tif")
    return Expect(args, str(locked), r"cannot write in this folder \(Permission denied\)")


@case
def case_output_exists_without_overwrite(env: Env) -> Expect:
    (env.out / "out.tif").write_bytes(b"precious")
    args = predict(env, env.inputs / "dem.tif")
    return Expect(args, str(env.out / "out.tif"), r"already exists \(use --overwrite")


@case
def case_output_format_unknown(env: Env) -> Expect:
    args = predict(env, env.inputs / "dem.tif", output="out.xyz")
    return Expect(args, str(env.out / "out.xyz"), "cannot tell the output format")


def fail_fsync(env: Env, after: int) -> None:
    """The disk fills up while the partial output grows: syncing its files (a tile's chunk,
    then its line in the log) succeeds ``after`` times, then ``os.fsync`` reports ENOSPC (as it
    does for data the disk had no room for)."""
    calls = {"n": 0}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if ".partial.zarr/" in os.readlink(f"/proc/self/fd/{fd}"):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    env.monkeypatch.setattr(os, "fsync", fsync)


@case
def case_disk_full_before_the_first_tile_is_saved(env: Env) -> Expect:
    fail_fsync(env, after=0)
    args = predict(env, env.inputs / "dem.tif", *TILES)
    return Expect(args, "out.tif.partial.zarr", "No space left on device$")


@case
def case_disk_full_while_writing(env: Env) -> Expect:
    fail_fsync(env, after=2)  # the first tile is saved, the second is not
    args = predict(env, env.inputs / "dem.tif", *TILES)
    problem = "No space left on device; 1 of 15 tiles are kept in .*: rerun with --resume"
    return Expect(args, "out.tif.partial.zarr", problem, leaves=("out.tif.partial.zarr/",))


def interrupt_network(env: Env, on_call: int) -> None:
    """Ctrl-C: KeyboardInterrupt from the ``on_call``-th forward pass of the network."""
    calls = {"n": 0}
    real_forward = SuperResolver.forward

    def forward(self: SuperResolver, lowres_m: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == on_call:
            raise KeyboardInterrupt
        return real_forward(self, lowres_m)

    env.monkeypatch.setattr(SuperResolver, "forward", forward)


@case
def case_ctrl_c_before_the_first_tile_is_saved(env: Env) -> Expect:
    interrupt_network(env, on_call=1)
    args = predict(env, env.inputs / "dem.tif", *TILES)
    return Expect(args, "", "^demsr: interrupted$", exit_code=130)


@case
def case_ctrl_c_during_prediction(env: Env) -> Expect:
    interrupt_network(env, on_call=3)
    args = predict(env, env.inputs / "dem.tif", *TILES)
    problem = (
        "^demsr: interrupted; 2 of 15 tiles are kept in .*out.tif.partial.zarr: rerun with --resume"
    )
    leaves = ("out.tif.partial.zarr/",)
    return Expect(args, "out.tif", problem, exit_code=130, leaves=leaves)


@case
def case_partial_result_without_resume(env: Env) -> Expect:
    interrupt_network(env, on_call=3)
    assert run_cli(predict(env, env.inputs / "dem.tif", *TILES))[0] == 130
    env.monkeypatch.undo()
    args = predict(env, env.inputs / "dem.tif", *TILES)
    problem = (
        "an earlier run left a partial result; pass --resume .* or --overwrite to start again$"
    )
    return Expect(args, "out.tif.partial.zarr", problem)


@case
def case_resume_with_other_settings(env: Env) -> Expect:
    interrupt_network(env, on_call=3)
    assert run_cli(predict(env, env.inputs / "dem.tif", *TILES))[0] == 130
    env.monkeypatch.undo()
    args = predict(env, env.inputs / "dem.tif", "--tile-px", "16", "--resume")
    problem = "cannot resume, tile_px differs from the interrupted run .was 32, now 16.; rerun"
    return Expect(args, "out.tif.partial.zarr", problem)


# -- training data ---------------------------------------------------------------------------


@case
def case_empty_training_set_after_filtering(env: Env) -> Expect:
    source = env.inputs / "dem.tif"
    args = ["prepare", source, "-o", env.out / "pairs", "--patch-px", "4", "--min-relief-m", "1e5"]
    args.append("--no-progress")
    return Expect(args, str(source), "no usable patches: .*flat")


@case
def case_raster_smaller_than_a_training_patch(env: Env) -> Expect:
    source = env.inputs / "dem.tif"  # 67 x 129 cells: no 160 x 160 patch fits
    args = ["prepare", source, "-o", env.out / "pairs", "--no-progress"]
    return Expect(args, str(source), "no patches: smaller than one 160 px patch")


@case
def case_model_scale_differs_from_the_pairs(env: Env) -> Expect:
    overrides = tiny_overrides(env.pairs, env.out / "run", "model.scale=4")
    args = ["train", *set_options(overrides), "--no-progress"]
    return Expect(args, "train.h5", "pairs are x5 but the model is x4")


def snapshot(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def run_cli(args: list[Any]) -> tuple[int, str, str, BaseException | None]:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    return result.exit_code, result.stdout, result.stderr, result.exception


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_in_one_line_and_leaves_nothing(
    name: str,
    inputs: Inputs,
    tiny_pairs: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    expect = CASES[name](Env(inputs, out, tiny_pairs, monkeypatch))
    before = snapshot(out)
    code, stdout, stderr, exception = run_cli(expect.args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expect.exit_code, stderr
    assert isinstance(exception, SystemExit), exception  # handled: no traceback
    assert len(lines) == 1, stderr
    (line,) = lines
    assert line.startswith(("demsr: error: ", "demsr: interrupted")), line
    assert expect.names in line, line
    assert re.search(expect.problem, line), line
    assert "Traceback" not in stdout + stderr
    new = snapshot(out) - before
    folders = [leaf.rstrip("/") for leaf in expect.leaves if leaf.endswith("/")]
    outside = {p for p in new if not any(p == f or p.startswith(f + "/") for f in folders)}
    assert outside == {leaf for leaf in expect.leaves if not leaf.endswith("/")}, sorted(new)
    assert all(folder in new for folder in folders), sorted(new)
    assert not inputs.marker.exists(), "a pickle was unpickled"


# -- the same errors from a real process, and --debug ----------------------------------------


def demsr_process(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m demsr ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "demsr", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def test_a_real_process_prints_one_line_and_debug_shows_the_traceback(
    inputs: Inputs, tmp_path: Path
) -> None:
    """GDAL's own report of the unreadable file stays hidden (shown with -v); --debug gives the
    traceback."""
    args = ["predict", inputs.checkpoint, inputs / "notes.tif", tmp_path / "out.tif"]
    plain = demsr_process(*args)
    assert plain.returncode == 1
    assert plain.stderr.strip().splitlines() == [
        f"demsr: error: {inputs / 'notes.tif'}: cannot be read as a raster "
        f"('{inputs / 'notes.tif'}' not recognized as being in a supported file format.)"
    ]
    debug = demsr_process("--debug", *args)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "demsr.io.RasterError" in debug.stderr
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_what_gdal_said(inputs: Inputs, tmp_path: Path) -> None:
    args = ["-v", "predict", inputs.checkpoint, inputs / "notes.tif", tmp_path / "out.tif"]
    code, _, stderr, _ = run_cli(args)
    assert code == 1
    assert "GDAL signalled an error" in stderr and "not recognized" in stderr
    assert stderr.strip().splitlines()[-1].startswith("demsr: error: ")


# -- accepted as they are ----------------------------------------------------------------------


def test_nan_without_a_nodata_flag_is_nodata(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A float raster that marks voids with NaN but declares no nodata value is read as it
    means: NaN cells are nodata, and so is their footprint in the output (NaN as well)."""
    raster = read_raster(inputs / "dem.tif")
    values = raster.data.copy()
    values[10:20, 30:40] = np.nan
    source = tmp_path / "nan_voids.tif"
    with rasterio.open(source, "w", **_profile(raster)) as dst:
        dst.write(values, 1)
        assert dst.nodata is None
    output = tmp_path / "out.tif"
    code, _, stderr, _ = run_cli(predict(Env(inputs, tmp_path, tmp_path, monkeypatch), source))
    assert code == 0, stderr
    with rasterio.open(output) as dst:
        result = dst.read(1)
        assert dst.crs == rasterio.crs.CRS.from_user_input(f"EPSG:{raster.crs.to_epsg()}+5773")
    assert np.isnan(result[50:100, 150:200]).all()
    assert np.isfinite(result[:50]).all() and np.isfinite(result[100:]).all()


# -- interrupted and failed runs leave no half-written product ----------------------------------


def test_ctrl_c_keeps_the_tiles_done_and_resume_finishes_identically(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(inputs, tmp_path, tmp_path, monkeypatch)
    reference = tmp_path / "reference.tif"
    assert run_cli(predict(env, inputs / "dem.tif", *TILES, output=reference.name))[0] == 0

    interrupt_network(env, on_call=5)
    code, _, stderr, _ = run_cli(predict(env, inputs / "dem.tif", *TILES))
    assert code == 130 and "4 of 15 tiles are kept" in stderr
    monkeypatch.undo()
    calls = count_network_calls(monkeypatch)
    code, _, stderr, _ = run_cli(predict(env, inputs / "dem.tif", *TILES, "--resume"))
    assert code == 0, stderr
    assert calls["n"] == 11  # only the tiles not yet done
    assert (tmp_path / "out.tif").read_bytes() == reference.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif", "reference.tif"]


def count_network_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"n": 0}
    real_forward = SuperResolver.forward

    def forward(self: SuperResolver, lowres_m: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return real_forward(self, lowres_m)

    monkeypatch.setattr(SuperResolver, "forward", forward)
    return calls


def test_disk_full_while_finalising_keeps_the_tiles_and_resume_only_finalises(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(inputs, tmp_path, tmp_path, monkeypatch)
    real_fsync_file = demsr.io.fsync_file

    def full_disk(path: str | os.PathLike[str]) -> None:
        if re.fullmatch(r"\.out\.tif\.\w{8}\.part", Path(path).name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        real_fsync_file(path)

    monkeypatch.setattr(demsr.io.safety, "fsync_file", full_disk)  # the COG's temporary file
    code, _, stderr, _ = run_cli(predict(env, inputs / "dem.tif", *TILES))
    assert code == 1
    assert (
        stderr.strip()
        .splitlines()[-1]
        .endswith(
            "No space left on device; 15 of 15 tiles are kept in "
            f"{tmp_path / 'out.tif'}.partial.zarr: rerun with --resume to continue"
        )
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif.partial.zarr"]
    monkeypatch.undo()
    calls = count_network_calls(monkeypatch)
    code, _, stderr, _ = run_cli(predict(env, inputs / "dem.tif", *TILES, "--resume"))
    assert code == 0, stderr
    assert calls["n"] == 0  # nothing predicted again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
    with rasterio.open(tmp_path / "out.tif") as dst:
        assert dst.width == 129 * 5 and np.isfinite(dst.read(1)).all()


def test_checkpoints_are_written_to_a_temporary_file_synced_then_renamed(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.safetensors"
    shutil.copyfile(inputs.checkpoint, target)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: Any, destination: Any) -> None:
        events.append(("rename", f"{source} -> {destination}"))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model = load_checkpoint(inputs.checkpoint)
    save_checkpoint(target, model.build_model(), model.scaling)
    (synced, temporary), (renamed, move), (synced_folder, folder) = events
    assert synced == "fsync" and Path(temporary).parent == tmp_path
    assert Path(temporary).name.startswith(".last.safetensors.")
    assert renamed == "rename" and move == f"{temporary} -> {target}"
    assert synced_folder == "fsync" and folder == str(tmp_path)  # the rename is durable too


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a file is written, then the process dies (here: an exception): the checkpoint that
    ``--resume`` loads is still the previous, complete one, and no temporary file is left."""
    target = tmp_path / "last.safetensors"
    shutil.copyfile(inputs.checkpoint, target)
    before = target.read_bytes()

    def half_then_crash(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(errno.EIO, "simulated crash while writing")

    monkeypatch.setattr(demsr.checkpoint, "save_file", half_then_crash)
    model = load_checkpoint(inputs.checkpoint)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(target, model.build_model(), model.scaling)
    assert target.read_bytes() == before
    load_checkpoint(target)  # still complete
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


def test_stale_temporaries_of_a_killed_run_are_removed_on_resume(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(inputs, tmp_path, tmp_path, monkeypatch)
    interrupt_network(env, on_call=2)
    assert run_cli(predict(env, inputs / "dem.tif", *TILES))[0] == 130
    monkeypatch.undo()
    stale = [
        ".out.tif.k1ll3d_0.part",
        ".out.tif.partial.zarr.abcdefgh.part",
        ".out.tif.x_y_z_12.staging.tif",
    ]
    for name in stale:
        (tmp_path / name).write_bytes(b"left by a killed process")
    (tmp_path / ".other.tif.abcdefgh.part").write_bytes(b"not ours")
    code, _, stderr, _ = run_cli(predict(env, inputs / "dem.tif", *TILES, "--resume"))
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tif.abcdefgh.part", "out.tif"]


# -- security ----------------------------------------------------------------------------------


def test_a_zipped_raster_is_read_in_place_never_extracted(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "dem.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(inputs / "dem.tif", "dem/dem.tif")
    out = tmp_path / "out"
    out.mkdir()
    env = Env(inputs, out, tmp_path, monkeypatch)
    code, _, stderr, _ = run_cli(predict(env, archive))
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dem.zip", "out"]
    assert [p.name for p in out.iterdir()] == ["out.tif"]


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call in ``tree`` (``os.system``, ``eval``, ...)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts = []
            target: ast.expr = node.func
            while isinstance(target, ast.Attribute):
                parts.append(target.attr)
                target = target.value
            parts.append(target.id if isinstance(target, ast.Name) else "<expression>")
            found.append((".".join(reversed(parts)), node))
    return found


FORBIDDEN_CALLS = {
    "eval": "evaluates text as code",
    "exec": "runs text as code",
    "os.system": "runs a shell",
    "os.popen": "runs a shell",
    "pickle.load": "unpickles",
    "pickle.loads": "unpickles",
    "torch.load": "unpickles unless weights_only=True",
}


def test_the_package_never_runs_a_shell_evaluates_text_or_unpickles() -> None:
    """No shell, eval/exec or unpickling anywhere in src/demsr: paths from configs and command
    lines are only ever opened as files, and a legacy torch.load would need weights_only=True."""
    offences = []
    for path in sorted((REPO / "src" / "demsr").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, node in _calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno} {name}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                weights_only = keywords.get("weights_only")
                if isinstance(weights_only, ast.Constant) and weights_only.value is True:
                    continue
            if name in FORBIDDEN_CALLS:
                offences.append(f"{where}: {FORBIDDEN_CALLS[name]}")
            elif name.startswith(("subprocess.", "asyncio.create_subprocess")):
                offences.append(f"{where}: starts a process")
            shell = keywords.get("shell")
            if isinstance(shell, ast.Constant) and shell.value is True:
                offences.append(f"{where}: shell=True")
    assert offences == []


# -- an output never replaces an input -----------------------------------------------------------


def _spellings(folder: Path, source: Path) -> dict[str, Path]:
    """Other names of ``source`` (which lies in ``folder``): a detour through a subfolder, a
    symlink, a hard link."""
    (folder / "x").mkdir(exist_ok=True)
    (folder / "link.tif").symlink_to(source)
    os.link(source, folder / "hard.tif")
    return {
        "same path": source,
        "detour": folder / "x" / ".." / source.name,
        "symlink": folder / "link.tif",
        "hard link": folder / "hard.tif",
    }


@pytest.mark.parametrize("spelling", ["same path", "detour", "symlink", "hard link"])
@pytest.mark.parametrize("command", ["predict", "degrade"])
def test_an_output_that_is_the_input_is_refused_even_with_overwrite(
    inputs: Inputs, tmp_path: Path, command: str, spelling: str
) -> None:
    source = tmp_path / "in.tif"
    shutil.copy(inputs / "dem.tif", source)
    before = source.read_bytes()
    output = _spellings(tmp_path, source)[spelling]
    if command == "predict":
        args = ["predict", inputs.checkpoint, source, output, "--device", "cpu", "--overwrite"]
        args.append("--no-progress")
    else:
        args = ["degrade", source, output, "--scale", "5", "--overwrite"]
    code, _, stderr, exception = run_cli(args)
    assert code == 1 and isinstance(exception, SystemExit), stderr
    assert stderr.strip().splitlines() == [
        f"demsr: error: {output}: is the input {source}; write the output to another path "
        "(an input is never overwritten)"
    ]
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.tif", "in.tif", "link.tif", "x"]


def test_no_command_writes_over_its_inputs(
    inputs: Inputs, tiny_pairs: Path, tmp_path: Path
) -> None:
    """evaluate, report, plot, prepare, import-mindearth, train and finetune refuse an output (or
    a run folder, or one of its files) that is one of their inputs, even with --overwrite, and
    leave every input as it was."""
    dem = tmp_path / "dem.tif"
    shutil.copy(inputs / "dem.tif", dem)
    (tmp_path / "x").mkdir()
    (tmp_path / "page.html").symlink_to(dem)  # a raster under the name of the output
    figure = tmp_path / "figure.png"
    figure.symlink_to(dem)
    pairs = tmp_path / "pairs"
    shutil.copytree(tiny_pairs, pairs)
    run = tmp_path / "run"
    run.mkdir()
    parent = run / "best.safetensors"  # fine-tuning would write its best epoch over it
    shutil.copy(inputs.checkpoint, parent)
    model = inputs.checkpoint
    commands = {
        "evaluate": ["evaluate", model, dem, "--json", tmp_path / "x" / ".." / "dem.tif"],
        "report": ["report", model, "--data", tmp_path / "page.html", "-o", tmp_path / "page.html"],
        "plot": ["plot", "compare", "--truth", figure, "-o", figure],
        "prepare": ["prepare", pairs / "train" / "train.h5", "-o", pairs],
        "import-mindearth": ["import-mindearth", model, model],
    }
    commands = {name: [*args, "--overwrite"] for name, args in commands.items()}
    commands["train"] = ["train", *set_options(tiny_overrides(pairs, pairs))]
    commands["finetune"] = ["finetune", parent, *set_options(tiny_overrides(pairs, run))]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for name, args in commands.items():
        code, _, stderr, exception = run_cli(args)
        assert code == 1 and isinstance(exception, SystemExit), (name, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "is the input" in lines[0], (name, stderr)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# -- logs ----------------------------------------------------------------------------------------


def _predict_stderr(inputs: Inputs, output: Path, *options: str, tty: bool = False) -> str:
    """``demsr [options] predict`` in a real process; its stderr (a pseudo-terminal if ``tty``)."""
    import fcntl
    import pty
    import struct
    import termios

    args = [sys.executable, "-m", "demsr", *options, "predict", inputs.checkpoint]
    args += [inputs / "dem.tif", output, "--device", "cpu", *TILES]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    if not tty:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bars_only_on_a_terminal_and_never_with_quiet(
    inputs: Inputs, tmp_path: Path
) -> None:
    logged = _predict_stderr(inputs, tmp_path / "a.tif")
    assert "tile/s" not in logged and "\r" not in logged and "block/s" not in logged
    summary = [line for line in logged.splitlines() if line.startswith("predicted 15 tiles")]
    assert len(summary) == 1, logged
    on_terminal = _predict_stderr(inputs, tmp_path / "c.tif", tty=True)
    assert "predict:" in on_terminal and "tile" in on_terminal  # the bar, where it is watched
    assert _predict_stderr(inputs, tmp_path / "d.tif", "-q", tty=True) == ""


def test_a_multiband_raster_says_which_band_is_read_and_a_byte_raster_warns(
    inputs: Inputs, tmp_path: Path
) -> None:
    for name, band, expected in (
        ("three_bands.tif", "2", "three_bands.tif: 3 bands; reading band 2 (choose with --band)"),
        ("uint8.tif", "1", "uint8.tif: band 1 is uint8, a type that holds images or masks"),
    ):
        output = tmp_path / f"{name}.out.tif"
        args = ["predict", inputs.checkpoint, inputs / name, output, "--band", band, *TILES]
        done = demsr_process(*args, "--device", "cpu", "--no-progress")
        assert done.returncode == 0, done.stderr
        assert expected in done.stderr
        assert output.exists()
    with rasterio.open(tmp_path / "three_bands.tif.out.tif") as dst:
        assert dst.tags()["source_band"] == "2"
