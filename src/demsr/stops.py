"""Named points where a run can be stopped on purpose, to test what a kill leaves behind.

A fault test cannot rely on timing to land a kill in a given phase (the tile loop, the COG's
overview build, the NetCDF write): a faster or slower machine moves the phase. Instead the code
calls :func:`stop_point` with the phase's name at each point worth testing, and the environment
variable :data:`STOP_ENV` names the point (and, after a colon, the how-many-th time it is reached)
at which the process sends itself a signal, SIGKILL unless :data:`SIGNAL_ENV` names another
(``INT`` for a Ctrl-C)::

    DEMSR_STOP_AT=tiles:3 demsr predict in.tif out.tif        # killed after the 3rd batch
    DEMSR_STOP_AT=cog-overviews demsr predict in.tif out.tif  # killed as overviews are built

Without the variable a stop point costs one dictionary lookup. The points:

``tiles``            after a batch of tiles is recorded in the partial store
``store-complete``   every tile is in the partial store; the product is not started
``cog-staging``      the COG's staging GeoTIFF holds its first block
``cog-overviews``    the staging GeoTIFF is complete; GDAL builds its overviews
``cog-copy``         the COG is written under its temporary name, not yet renamed
``netcdf-blocks``    the NetCDF (temporary name) holds its first block
``zarr-blocks``      the Zarr store (temporary name) holds its first block
``zarr-swap``        ``--overwrite``: the old Zarr product is moved aside, the new one not yet in
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter

log = logging.getLogger(__name__)

STOP_ENV = "DEMSR_STOP_AT"
SIGNAL_ENV = "DEMSR_STOP_SIGNAL"

POINTS = (
    "tiles",
    "store-complete",
    "cog-staging",
    "cog-overviews",
    "cog-copy",
    "netcdf-blocks",
    "zarr-blocks",
    "zarr-swap",
)

_reached: Counter[str] = Counter()


def _parse(value: str) -> tuple[str, int]:
    name, _, count = value.partition(":")
    if name not in POINTS:
        raise ValueError(f"{STOP_ENV}={value}: unknown stop point (one of {', '.join(POINTS)})")
    try:
        times = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{STOP_ENV}={value}: the count after ':' must be an integer") from None
    return name, times


def stop_point(name: str) -> None:
    """Stop the process here if :data:`STOP_ENV` names this point and it is reached for the
    time it asks (default: the first)."""
    wanted = os.environ.get(STOP_ENV)
    if not wanted:
        return
    target, times = _parse(wanted)
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] != times:
        return
    signame = os.environ.get(SIGNAL_ENV, "KILL").upper().removeprefix("SIG")
    log.debug("stop point %s reached (%d); sending SIG%s", name, times, signame)
    os.kill(os.getpid(), getattr(signal, f"SIG{signame}"))
