"""The prompt vocabulary shared by training, evaluation, prediction and the web page.

- :class:`ObjectPrompt` (``record``): one object's prompt in original image pixels, whoever
  made it (the training sampler, ``samtune eval``'s modes, the CLI's flags and files, the web
  page), and :func:`group_by_structure`, the one rule that batches objects whose prompts have
  the same shape into one decoder call.
- ``boxes``: the tight box as SAM trains with it (scaled, jittered) and the full-image box.
- ``points``: the one interior-point picker (:func:`interior_point`, the pixel farthest from
  the mask's edge), ``finestsam_points``'s centre point and grid snapping, and the sampler of
  positive and negative points.
- ``clicks``: the one correction-click sampler of interactive rounds (``prompts.click_mode``:
  SAM's uniform error pixel or SAM 2's farthest error pixel).

Point convention: a point is the (x, y) = (column, row) index of a pixel, as SAM's predictor
takes clicks; boxes are xyxy on pixel edges. Labels are 1 (object), 0 (background) and
:data:`PAD_LABEL` (padding the prompt encoder ignores).
"""

from samtune.prompts.boxes import clip_box, full_image_box, jitter_box, scale_box
from samtune.prompts.clicks import CLICK_MODES, correction_clicks
from samtune.prompts.points import (
    center_point,
    inner_distance,
    interior_point,
    sample_points,
    snap_to_grid,
)
from samtune.prompts.record import PAD_LABEL, ObjectPrompt, group_by_structure

__all__ = [
    "CLICK_MODES", "PAD_LABEL", "ObjectPrompt", "center_point", "clip_box", "correction_clicks",
    "full_image_box", "group_by_structure", "inner_distance", "interior_point", "jitter_box",
    "sample_points", "scale_box", "snap_to_grid",
]
