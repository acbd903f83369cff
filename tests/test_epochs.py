"""The loss of a training batch."""

from __future__ import annotations

import pytest
import torch

from demsr.epochs import gradient_mse


def test_gradient_term_of_the_loss() -> None:
    truth = torch.zeros(1, 1, 3, 4)
    prediction = truth.clone()
    prediction[..., 1, 2] = 1.0  # one bump: 2 differences along the row, 2 along the column
    assert gradient_mse(prediction, truth).item() == pytest.approx(4 / (3 * 3 + 2 * 4))
    # an offset has no slope error
    assert gradient_mse(truth + 5.0, truth).item() == 0.0
