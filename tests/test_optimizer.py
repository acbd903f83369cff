"""The optimizer's learning rate on several ranks."""

from __future__ import annotations

import pytest

from demsr.optimizer import scaled_learning_rate


def test_learning_rate_scaling_with_the_world_size() -> None:
    assert scaled_learning_rate(1e-4, "none", 8) == pytest.approx(1e-4)
    assert scaled_learning_rate(1e-4, "linear", 8) == pytest.approx(8e-4)
    assert scaled_learning_rate(1e-4, "sqrt", 4) == pytest.approx(2e-4)
    assert scaled_learning_rate(1e-4, "linear", 1) == pytest.approx(1e-4)
