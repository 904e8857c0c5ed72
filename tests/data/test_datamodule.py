"""The datamodule gives the same batches for a seed, whatever the worker count, honours the
object cap and reseeds every epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from samtune.config.prompts import AugmentConfig, ColorJitterConfig, PromptConfig
from samtune.data.batch import Batch, Collator, image_key
from samtune.data.datamodule import EpochSampler, PromptedDataset, SamDataModule, cap_objects
from samtune.data.sample import Sample
from samtune.models.preprocess import ResizeLongestSide

PROMPTS = PromptConfig(mix={"box": 1, "points": 1, "none": 0.5},
                       points={"positive": 2, "negative": 1})
AUGMENT = AugmentConfig(hflip=0.5, rotate90=0.5, color_jitter=ColorJitterConfig())


def source(n: int = 6) -> list[Sample]:
    """Images of 32x48 with 1..5 rectangular objects (image i has i % 5 + 1)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        k = i % 5 + 1
        masks = np.zeros((k, 32, 48), bool)
        for j in range(k):
            y, x = rng.integers(0, 24), rng.integers(0, 38)
            masks[j, y:y + 8, x:x + 10] = True
        out.append(Sample(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8), masks=masks,
                          category_ids=[j + 1 for j in range(k)], path=f"img{i}.png"))
    return out


def collator() -> Collator:
    return Collator(ResizeLongestSide(64, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
                    (16, 16))


def datamodule(**kwargs) -> SamDataModule:
    args = {"train": source(), "collator": collator(), "val": source(3), "prompts": PROMPTS,
            "augment": AUGMENT, "batch_size": 2, "seed": 0}
    args.update(kwargs)
    return SamDataModule(**args)


def fingerprint(batches: list[Batch]) -> list:
    """Everything a batch carries, as comparable values."""
    out = []
    for b in batches:
        groups = [(g.objects.tolist(),
                   *(None if t is None else t.tolist() for t in
                     (g.prompts.image_index, g.prompts.points, g.prompts.point_labels,
                      g.prompts.boxes)))
                  for g in b.prompt_groups]
        out.append((b.sample_indices.tolist(), b.image_ids, b.images.sum().item(),
                    b.targets.sum((1, 2)).tolist(), b.object_image.tolist(),
                    b.category_ids.tolist(), groups))
    return out


def test_same_seed_same_batches_and_another_seed_differs():
    a = fingerprint(list(datamodule().train_dataloader()))
    b = fingerprint(list(datamodule().train_dataloader()))
    c = fingerprint(list(datamodule(seed=1).train_dataloader()))
    assert a == b
    assert a != c


def test_worker_count_does_not_change_batches():
    serial = fingerprint(list(datamodule(num_workers=0).train_dataloader()))
    parallel = fingerprint(list(datamodule(num_workers=2).train_dataloader()))
    assert serial == parallel


def test_set_epoch_reseeds_order_and_draws():
    dm = datamodule()
    loader = dm.train_dataloader()
    first = fingerprint(list(loader))
    dm.set_epoch(1)
    second = fingerprint(list(loader))
    dm.set_epoch(0)
    again = fingerprint(list(loader))
    assert first == again != second
    assert sorted(i for f in second for i in f[0]) == list(range(6))  # each sample once


def test_variable_object_counts_and_cap():
    dm = datamodule(prompts=PROMPTS.model_copy(update={"max_objects_per_image": 3}),
                    augment=None, batch_size=3)
    counts = {}
    for b in dm.train_dataloader():
        per_image = torch.bincount(b.object_image, minlength=len(b)).tolist()
        counts.update(zip(b.sample_indices.tolist(), per_image))
        assert b.targets.any((1, 2)).all()
    assert counts == {i: min(i % 5 + 1, 3) for i in range(6)}


def test_cap_draws_without_replacement_deterministically():
    s = source(5)[4]  # five objects
    picks = [cap_objects(s, 3, np.random.default_rng(seed)) for seed in range(20)]
    for p in picks:
        assert len(p) == 3 and len(set(p.object_ids)) == 3
        assert p.category_ids == [i + 1 for i in p.object_ids]
        for j, oid in enumerate(p.object_ids):
            np.testing.assert_array_equal(p.masks[j], s.masks[oid])
    assert len({tuple(p.object_ids) for p in picks}) > 1
    again = cap_objects(s, 3, np.random.default_rng(0))
    assert again.object_ids == picks[0].object_ids
    assert cap_objects(s, 5, np.random.default_rng(0)) is s


def test_validation_is_not_augmented_and_repeats():
    dm = datamodule()
    first = list(dm.val_dataloader())
    dm.set_epoch(3)
    assert fingerprint(first) == fingerprint(list(dm.val_dataloader()))
    images = [s.image for s in source(3)]
    keys = [k for b in first for k in b.image_ids]
    assert keys == [image_key(im) for im in images]


def test_dataset_items_depend_only_on_seed_epoch_index():
    ds = PromptedDataset(source(), PROMPTS, AUGMENT, seed=4)
    a, b = ds[(2, 3)], ds[(2, 3)]
    np.testing.assert_array_equal(a.sample.image, b.sample.image)
    assert [p.kind for p in a.prompts] == [p.kind for p in b.prompts]
    assert a.sample_index == 3 and len(a.mask_keys) == len(a.sample)
    assert ds[3].sample_index == 3  # plain index means epoch 0


def test_sampler_is_a_permutation_per_epoch():
    s = EpochSampler(10, seed=2)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for _, i in e0) == list(range(10)) and {e for e, _ in e1} == {1}
    assert [i for _, i in e0] != [i for _, i in e1]
    assert list(EpochSampler(4, shuffle=False)) == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        datamodule(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        datamodule(num_workers=-1)


def test_lightning_reseeds_every_epoch():
    import lightning as L

    class Record(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[int]] = []

        def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
            if batch_idx == 0:
                self.seen.append([])
            self.seen[-1] += batch.sample_indices.tolist()
            return (self.w - batch.images.mean()) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    module = Record()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule(val=None))
    orders = module.seen
    assert len(orders) == 3 and all(sorted(o) == list(range(6)) for o in orders)
    sampler = EpochSampler(6, seed=0)
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected.append([i for _, i in sampler])
    assert orders == expected


def test_validation_prompts_do_not_follow_the_training_epoch():
    """Lightning sets the epoch on validation samplers too; validation must not change with it."""
    from samtune.data.datamodule import EpochSampler

    sampler = EpochSampler(5, seed=3, shuffle=False, follow_epochs=False)
    first = list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == first and all(epoch == 0 for epoch, _ in first)


def test_ddp_shards_cover_the_epoch_once_with_equal_lengths():
    from samtune.data.datamodule import EpochSampler

    shards = []
    for rank in range(3):
        sampler = EpochSampler(7, seed=1)
        sampler.shard(rank, 3)
        sampler.set_epoch(2)
        shards.append([i for _, i in sampler])
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set().union(*map(set, shards)) == set(range(7))
    full = EpochSampler(7, seed=1)
    full.set_epoch(2)
    order = [i for _, i in full]
    assert [order[k] for k in range(0, 7, 3)] == shards[0][: len(range(0, 7, 3))]
