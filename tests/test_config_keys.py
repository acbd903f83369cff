"""Config keys under other names: a recorded config's old names read under the new ones."""

from __future__ import annotations


def test_shipped_checkpoint_config_with_old_keys_reads_under_the_new_ones() -> None:
    from demsr.checkpoint import load_checkpoint
    from demsr.config import config_from_dict
    from demsr.config_keys import upgrade_config_dict
    from demsr.pretrained import resolve_checkpoint

    recorded = load_checkpoint(resolve_checkpoint("lite")).metadata["training"]
    assert "lr_decay" in recorded["optimizer"]  # as the file was written (left unchanged)
    upgraded = upgrade_config_dict(recorded)
    assert upgraded["optimizer"]["learning_rate_decay"] == recorded["optimizer"]["lr_decay"]
    assert "lr_decay" not in upgraded["optimizer"]
    config = config_from_dict(upgraded, source="lite")
    assert config.optimizer.learning_rate_decay == recorded["optimizer"]["lr_decay"]
    assert config.optimizer.finetune_learning_rate == recorded["optimizer"]["finetune_lr"]
