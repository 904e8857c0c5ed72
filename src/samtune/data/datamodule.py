"""Dataset, sampler and LightningDataModule: Samples in, Batches out, reproducibly.

Every random draw for an item (augmentation, object cap, prompts) comes from a numpy
Generator seeded with (seed, epoch, index), and the shuffle order from one seeded with
(seed, epoch). Nothing depends on which worker loads an item or in what order, so a run gives
the same batches with 0 or 8 workers, and a resumed run the same batches as the original.
The sampler hands the epoch to the dataset together with each index, so no state has to
reach the worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from samtune.config.prompts import AugmentConfig, PromptConfig, PromptKind
from samtune.data.batch import Collator, Item
from samtune.data.prompts import PreviousLogitsStore, PromptSampler, mask_key
from samtune.data.sample import Sample
from samtune.data.transforms import Augmenter, random_window, select_objects
from samtune.notices import notify
from samtune.prompts import ObjectPrompt

_ITEM_STREAM, _ORDER_STREAM = 1, 2  # keep item and shuffle seeds apart


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The Generator for one item of one epoch."""
    return np.random.default_rng([_ITEM_STREAM, seed, epoch, index])


def cap_objects(sample: Sample, max_objects: int | None, rng: np.random.Generator) -> Sample:
    """At most ``max_objects`` of the sample's objects, drawn without replacement (kept in
    their original order); the sample itself when it has no more than that."""
    if max_objects is None or len(sample) <= max_objects:
        return sample
    keep = np.sort(rng.choice(len(sample), size=max_objects, replace=False))
    return select_objects(sample, keep)


def as_negative(sample: Sample) -> Sample:
    """A sample without objects as one object with an empty mask: trained with no prompt,
    its target says "nothing here" (the image would otherwise make a step with no loss)."""
    empty = np.zeros((1, *sample.size), dtype=bool)
    return Sample(sample.image, masks=empty, path=sample.path, source=sample.source,
                  category_ids=None if sample.category_ids is None else [0])


class PromptedDataset(Dataset):
    """A source of Samples with augmentation and prompt sampling applied per item.

    Indexed by ``index`` (epoch 0) or ``(epoch, index)`` as :class:`EpochSampler` yields;
    returns an :class:`~samtune.data.batch.Item`. ``store`` holds previous logits for the
    ``logits`` prompt kind. With ``negatives`` (training), an item left without objects
    (none annotated, or all cropped away) becomes :func:`as_negative`.
    """

    def __init__(
        self,
        source: Sequence[Sample],
        prompts: PromptConfig,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        store: PreviousLogitsStore | None = None,
        crop_size: int | None = None,
        negatives: bool = False,
    ) -> None:
        self.source = source
        self.crop_size = crop_size
        self.prompts = prompts
        self.negatives = negatives
        self._said_cap = False  # the object cap names the first image it trims, once
        self.augmenter = Augmenter(augment or AugmentConfig())
        self.sampler = PromptSampler(prompts, store)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> Item:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = item_rng(self.seed, epoch, index)
        # a MixedSource draws a different subset each epoch: ask it for this epoch's item
        at = getattr(self.source, "at", None)
        sample = at(epoch, index) if at else self.source[index]
        if self.crop_size is not None:
            sample = random_window(sample, self.crop_size, rng)
        sample = self.augmenter(sample, rng)
        cap = self.prompts.max_objects_per_image
        if cap is not None and len(sample) > cap and not self._said_cap:
            self._said_cap = True
            notify(f"{sample.source}:{sample.path} has {len(sample)} objects: each epoch trains "
                   f"on {cap} of them, drawn afresh (prompts.max_objects_per_image: {cap}; null "
                   "for all, at the memory they take)")
        sample = cap_objects(sample, cap, rng)
        if self.negatives and len(sample) == 0:
            sample = as_negative(sample)
            keys = [mask_key(m) for m in sample.object_masks()]
            return Item(sample, [ObjectPrompt(kind=PromptKind())], index, keys)
        keys = [mask_key(m) for m in sample.object_masks()]
        return Item(sample, self.sampler(sample, rng, index, keys), index, keys)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` over ``n`` items, shuffled by (seed, epoch) when ``shuffle``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (as for a
    ``DistributedSampler``), which reseeds both the order and the items' random draws.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, follow_epochs: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.follow_epochs = follow_epochs
        self.epoch = 0
        self._skip = 0
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        """Under DDP, yield only every ``world_size``-th item of the epoch's order, starting at
        ``rank`` (padded by wrapping, so every rank takes the same number of steps)."""
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this on validation samplers too; with ``follow_epochs=False``
        (validation) the epoch stays 0, so every validation sees the same prompts."""
        if self.follow_epochs:
            self.epoch = int(epoch)

    def skip(self, count: int) -> None:
        """Leave out the first ``count`` items of the next pass (once): a run resumed
        mid-epoch continues the epoch's order where it stopped."""
        self._skip = int(count)

    def __len__(self) -> int:
        return -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.arange(self.n)
        if self.shuffle:
            rng = np.random.default_rng([_ORDER_STREAM, self.seed, self.epoch])
            order = rng.permutation(self.n)
        if self.world_size > 1:
            total = len(self) * self.world_size
            order = np.resize(order, total)[self.rank :: self.world_size]
        order, self._skip = order[self._skip:], 0
        return iter([(self.epoch, int(i)) for i in order])


class SamDataModule(L.LightningDataModule):
    """Train and validation loaders of :class:`~samtune.data.batch.Batch` records.

    Arguments:
      train, val: sources (any ``Sequence[Sample]``); ``val`` may be None.
      collator: maps items to the model frame (:meth:`Collator.for_model`).
      prompts: training prompt config; ``val_prompts`` for validation (default: the same;
        a run passes its config's ``val_prompts``, which has defaults of its own).
      augment: training augmentation (validation is never augmented).
      batch_size, val_batch_size: images per batch (``val_batch_size`` defaults to
        ``batch_size``).
      num_workers: loader processes; the batches do not depend on it.
      seed: seeds shuffling, augmentation, object caps and prompts.
      store: previous logits for the ``logits`` kind, filled by the trainer.
      drop_last: drop a last incomplete training batch.
      crop_size: train on random windows of this many pixels a side at full resolution
        (:func:`~samtune.data.transforms.random_window`); None: whole images.

    Validation items always use epoch 0, so every validation sees the same prompts.
    """

    def __init__(
        self,
        train: Sequence[Sample],
        collator: Collator,
        val: Sequence[Sample] | None = None,
        prompts: PromptConfig | None = None,
        val_prompts: PromptConfig | None = None,
        augment: AugmentConfig | None = None,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        store: PreviousLogitsStore | None = None,
        drop_last: bool = False,
        crop_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (val_batch_size is not None and val_batch_size < 1):
            raise ValueError(f"batch_size must be at least 1, got {batch_size}/{val_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        prompts = prompts or PromptConfig()
        self.collator = collator
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.store = store
        self.train_set = PromptedDataset(train, prompts, augment, seed, store, crop_size,
                                         negatives=True)
        self.val_set = None if val is None else PromptedDataset(val, val_prompts or prompts,
                                                                None, seed)
        self.train_sampler = EpochSampler(len(self.train_set), seed, shuffle=True)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the training order and draws for ``epoch`` (Lightning does this itself)."""
        self.train_sampler.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # Lightning's own distributed sampler would hide set_epoch from EpochSampler
            self.train_sampler.shard(trainer.global_rank, trainer.world_size)
        return self._loader(self.train_set, self.train_sampler, self.batch_size, self.drop_last)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches; an empty list (no validation) without a ``val`` source."""
        if self.val_set is None:
            return []
        sampler = EpochSampler(len(self.val_set), self.seed, shuffle=False, follow_epochs=False)
        return self._loader(self.val_set, sampler, self.val_batch_size, False)

    def _loader(self, dataset: Dataset, sampler: Sampler, batch_size: int,
                drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=self.collator,
            num_workers=self.num_workers, drop_last=drop_last,
            # fresh workers each epoch see the logits stored during the epoch before
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.seed),
        )
