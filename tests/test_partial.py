"""The partial store's record of a run: hooks described so that a resume with other settings
is refused."""

from __future__ import annotations

from test_predict import shift_by

from demsr.partial import describe_hook


def test_hook_descriptions_tell_settings_apart() -> None:
    assert describe_hook(shift_by(1.0)) != describe_hook(shift_by(2.0))
    assert describe_hook(shift_by(1.0)) == describe_hook(shift_by(1.0))
    assert describe_hook(None) is None
