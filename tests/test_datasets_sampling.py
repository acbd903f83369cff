"""The training sampler (demsr.datasets.sampling): ranks share out the single-process order."""

from __future__ import annotations

import math

import torch

from demsr.datasets import ShuffledShardSampler, epoch_generator


def test_sampler_deals_the_single_process_batches_to_the_ranks() -> None:
    pairs, batch, world = 23, 3, 4  # 23 = 4 x 5 + 3: the last 3 of each epoch's order left out
    left_out = []
    for epoch in (0, 1):
        single = ShuffledShardSampler(range(pairs), seed=5)
        single.set_epoch(epoch)
        order = list(single)
        assert sorted(order) == list(range(pairs))  # alone, nothing is left out
        shards = []
        for rank in range(world):
            sampler = ShuffledShardSampler(range(pairs), seed=5, num_replicas=world, rank=rank)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        assert (
            [len(shard) for shard in shards]
            == [pairs // world] * world
            == [len(ShuffledShardSampler(range(pairs), seed=5, num_replicas=world, rank=0))] * world
        )
        for k in range(math.ceil(pairs // world / batch)):
            together = {i for shard in shards for i in shard[k * batch : (k + 1) * batch]}
            global_batch = order[k * world * batch : (k + 1) * world * batch]
            # The union is the single-process batch (the last one short of the left-out tail).
            assert together == set(global_batch[: len(together)])
            assert len(together) == min(world * batch, world * (pairs // world) - k * world * batch)
        dealt = {i for shard in shards for i in shard}
        assert len(dealt) == world * (pairs // world)  # no pair twice
        left_out.append(set(range(pairs)) - dealt)
    assert left_out[0] != left_out[1]  # other pairs left out each epoch
    orders = []
    for epoch in (0, 1):
        sampler = ShuffledShardSampler(range(pairs), seed=5)
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    assert orders[0] != orders[1]  # another order, hence other left-out pairs, every epoch
    assert orders[0] == torch.randperm(pairs, generator=epoch_generator(5, 0)).tolist()
