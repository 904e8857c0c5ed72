"""``ObjectPrompt`` and the grouping rule every decoder call batches by."""

from __future__ import annotations

import numpy as np
import pytest

from samtune.errors import SamtuneError
from samtune.prompts import ObjectPrompt, group_by_structure

BOX = np.array([2.0, 3.0, 20.0, 30.0])


def _points(n: int) -> dict:
    return {"points": np.full((n, 2), 5.0), "point_labels": np.ones(n, np.int64)}


def test_objects_of_one_shape_share_a_group_in_first_seen_order():
    prompts = [
        ObjectPrompt(box=BOX),                      # 0: box
        ObjectPrompt(**_points(2)),                 # 1: two points
        ObjectPrompt(box=BOX, **_points(2)),        # 2: box + two points
        ObjectPrompt(box=BOX),                      # 3: box again
        ObjectPrompt(**_points(1)),                 # 4: one point: another shape
        ObjectPrompt(box=BOX, mask_logit=10.0),     # 5: box + mask input
        ObjectPrompt(**_points(2)),                 # 6
        ObjectPrompt(box=BOX, logits=np.zeros((4, 4), np.float32)),  # 7: same shape as 5
    ]
    assert group_by_structure(prompts) == [[0, 3], [1, 6], [2], [4], [5, 7]]
    assert prompts[2].structure == (2, True, False) and prompts[7].has_mask_input
    assert group_by_structure([]) == []


def test_prompts_outside_the_image_are_refused_with_where_and_what():
    ObjectPrompt(box=np.array([0.0, 0.0, 64.0, 48.0])).check_inside((48, 64), "x")  # edges are in
    with pytest.raises(SamtuneError, match=r"prompts.json object 3: box 0,0,65,48 is outside the image \(64x48\)"):
        ObjectPrompt(box=np.array([0.0, 0.0, 65.0, 48.0])).check_inside((48, 64), "prompts.json object 3")
    with pytest.raises(SamtuneError, match="point 64,1 is outside"):
        ObjectPrompt(points=np.array([[64.0, 1.0]]), point_labels=np.ones(1)).check_inside((48, 64), "p")


def test_json_form_is_what_a_prompt_file_holds():
    prompt = ObjectPrompt(box=BOX, category_id=7, **_points(1))
    assert prompt.to_json() == {"box": [2.0, 3.0, 20.0, 30.0], "points": [[5.0, 5.0]],
                                "labels": [1], "category_id": 7}
    assert ObjectPrompt().to_json() == {}
