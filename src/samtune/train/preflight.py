"""What a run checks in its data before it trains, and says out loud.

``samtune data check`` reads every sample and reports what it worked around (a JPEG mask
thresholded, an empty mask); training reads the same samples but used to drop those notes, and
an image without objects then made a step that trained on nothing. Before the first step,
:func:`preflight` reads every training and validation sample once and

- warns each of the notes ``data check`` prints, once (a ``DataWarning``);
- refuses a training set with no objects at all, naming its images;
- says how many training images have no objects: they train as negatives (no prompt, an
  empty target; see :class:`samtune.data.datamodule.PromptedDataset`);
- warns when there are no validation images, or none with an object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lightning.pytorch.utilities import rank_zero_only

from samtune.data.sample import Sample
from samtune.data.source import BadSample, category_names, sources_of, warn_problem
from samtune.errors import SamtuneError
from samtune.notices import notify


@dataclass
class SplitSummary:
    """Images, objects, the images without objects, and the objects per category id of
    one split."""

    images: int = 0
    objects: int = 0
    empty: list[str] = field(default_factory=list)
    categories: Counter[int] = field(default_factory=Counter)


def summarize(data: Sequence[Sample]) -> SplitSummary:
    """Read every sample of every source once; warn what each sample's reading noted."""
    out = SplitSummary()
    for source in sources_of(data):
        load = getattr(source, "load", None)
        for i in range(len(source)):
            if load is None:
                sample, found = source[i], []
            else:
                try:
                    sample, found = load(i)
                except BadSample:  # refused or skipped (and said) when the source was opened
                    continue
            if rank_zero_only.rank == 0:  # every DDP process reads the data; one speaks
                for problem in found:
                    warn_problem(problem)
            out.images += 1
            out.objects += len(sample)
            out.categories.update(sample.category_ids or [])
            if len(sample) == 0:
                out.empty.append(f"{getattr(source, 'name', '?')}:{sample.path}")
    return out


def _names(paths: list[str], limit: int = 5) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def preflight(train: Sequence[Sample], val: Sequence[Sample]) -> tuple[SplitSummary, SplitSummary]:
    """Summaries of the training and validation data; raises when nothing could train."""
    t = summarize(train)
    if t.objects == 0:
        raise SamtuneError(
            f"the training data holds no objects: all {t.images} image(s) have empty masks "
            f"({_names(t.empty)}). Check the masks (`samtune data check`), objects: and invert:.")
    if t.empty:
        notify(f"{len(t.empty)} of {t.images} training images have no objects "
               f"({_names(t.empty)}): they train as negatives, with no prompt and an empty "
               "target")
    v = summarize(val) if len(val) else SplitSummary()
    if v.images == 0:
        notify("no validation images (the split left none): the run trains without "
               "validation, so no base comparison and no best checkpoint; give data.val or a "
               "larger val_size")
    elif v.objects == 0:
        notify(f"the {v.images} validation image(s) hold no objects ({_names(v.empty)}): "
               "validation cannot measure the model")
    return t, v


def head_categories(train: Sequence[Sample], summary: SplitSummary) -> dict[int, str]:
    """The classes of ``model.class_head``: the categories with objects in the training data
    (a declared category without any, such as Roboflow's super-category 0, is not one), with
    their names; two at least, else a one-line error that says what the data holds."""
    names: Mapping[int, str] = category_names(train)
    ids = sorted(c for c, n in summary.categories.items() if n > 0)
    if len(ids) < 2:
        held = (f"objects of one category only ({names.get(ids[0], ids[0])!r})" if ids
                else "no category ids (a folder of masks or label maps has none)")
        raise SamtuneError(f"model.class_head learns the data's categories, and the training "
                           f"data has {held}: train on a COCO file with two categories or "
                           "more, or set model.class_head: false")
    return {c: names.get(c, f"category {c}") for c in ids}
