"""MedSAM's own preprocessing: the pipeline of its authors' ``MedSAM_Inference.py`` (square
resize with skimage, min-max to [0, 1], boxes scaled to the input, logits sized straight to the
image), run here on the official ``segment_anything`` modules, and samtune's on the same ones."""

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

from samtune.infer.predictor import Predictor
from samtune import load_model
from samtune.models.load import build_adapter, build_without_weights
from samtune.models.preprocess import MedSamResize
from samtune.models.registry import get_spec


def _image(h: int = 90, w: int = 140) -> np.ndarray:
    rng = np.random.default_rng(3)
    image = rng.integers(30, 200, size=(h, w, 3), dtype=np.uint8)
    image[20:60, 40:100] = (230, 60, 40)
    return image


def _reference_input(image: np.ndarray, size: int) -> torch.Tensor:
    """MedSAM_Inference.py: skimage resize to size x size, uint8, min-max, (1, 3, S, S)."""
    small = resize(image, (size, size), order=3, preserve_range=True, anti_aliasing=True)
    small = small.astype(np.uint8)
    spread = np.clip(small.max() - small.min(), a_min=1e-8, a_max=None)
    return torch.tensor((small - small.min()) / spread).float().permute(2, 0, 1)[None]


def test_medsam_spec_gets_medsams_preprocessing():
    spec = get_spec("medsam")
    adapter = build_adapter(spec, build_without_weights(spec))
    assert adapter.preprocessor == MedSamResize(1024)
    assert adapter.input_size_for((300, 500)) == (1024, 1024)
    assert get_spec("sam_vit_b").preprocessing == ""


def test_medsam_input_and_box_match_the_authors_pipeline_at_1024():
    image = _image()
    h, w, _ = image.shape
    ours = MedSamResize(1024)(image)
    torch.testing.assert_close(ours, _reference_input(image, 1024)[0], rtol=0, atol=0)
    assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0
    box = np.array([[40, 20, 100, 60]])
    torch.testing.assert_close(MedSamResize(1024).transform_boxes(box, (h, w)),
                               torch.tensor(box / np.array([w, h, w, h]) * 1024).float())


@torch.no_grad()
def test_medsam_masks_match_the_authors_pipeline_on_the_official_modules():
    """Same weights (the tiny SAM built from segment_anything's classes, 256 input), same
    image and box: the official modules fed as MedSAM_Inference.py feeds them give the
    logits and the mask samtune's Predictor gives."""
    sam = load_model("sam_tiny").model
    adapter = build_adapter(replace(get_spec("sam_tiny"), preprocessing="medsam"), sam)
    image, box = _image(), np.array([40, 20, 100, 60])
    h, w, _ = image.shape
    size = sam.image_encoder.img_size

    embedding = sam.image_encoder(_reference_input(image, size))
    box_in = torch.as_tensor(box[None] / np.array([w, h, w, h]) * size, dtype=torch.float)[:, None]
    sparse, dense = sam.prompt_encoder(points=None, boxes=box_in, masks=None)
    low_res, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  multimask_output=False)
    probability = F.interpolate(torch.sigmoid(low_res), size=(h, w), mode="bilinear", align_corners=False)
    reference = probability[0, 0].numpy() > 0.5

    predictor = Predictor(adapter)
    predictor.set_image(image)
    masks, _, logits = predictor.predict(box=box, multimask_output=False)
    torch.testing.assert_close(torch.as_tensor(logits[0]), low_res[0, 0], rtol=1e-4, atol=1e-4)
    # a sigmoid before the resize moves at most the pixels on the 0.5 contour
    differ = int((masks[0] != reference).sum())
    assert 0 < reference.sum() < h * w, "the check needs a mask with a contour"
    assert differ <= max(3, reference.sum() // 100), differ
