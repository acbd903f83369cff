"""Progress of a raster prediction: the durations its ETA lines show."""

from __future__ import annotations

from demsr.progress import format_duration


def test_durations_read_in_the_largest_useful_units() -> None:
    assert format_duration(3725) == "1 h 02 min"  # seconds dropped past an hour
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(12.4) == "12 s"
    assert format_duration(59.6) == "1 min 00 s"  # rounded to the second first
    assert format_duration(-3) == "0 s"  # a clock that stepped back says nothing odd
