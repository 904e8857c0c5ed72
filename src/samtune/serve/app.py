"""The FastAPI app: the static page and the JSON API behind it.

Every error answers ``{"error": "one line"}`` with a 4xx status (a bad prompt, an unknown id,
a refused upload) and leaves the server running; nothing a request sends can stop it. The
endpoints (documented in the README, "samtune serve"):

- ``GET  /api/info``: models (with load errors), dataset, corrections folder, limits
- ``GET  /api/images``, ``POST /api/images`` (multipart upload), ``GET /api/images/{id}``
  (size and ground-truth masks), ``GET /api/images/{id}/image.png``
- ``POST /api/encode``: encode an image for the models ahead of the first click
- ``POST /api/predict``: masks for points and/or a box, from every model
- ``POST /api/auto``: segment everything, every model
- ``GET  /api/masks``, ``GET /api/masks/{image}``, ``POST /api/masks``,
  ``DELETE /api/masks/{image}/{object}``: the corrections folder
- ``GET  /api/report/{model}``, ``GET /api/report/{model}/files/{path}``: a run's eval report
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from samtune.errors import SamtuneError
from samtune.infer.evaluate import report_folder
from samtune.infer.rle import decode_rle, encode_coco_rles
from samtune.serve.corrections import CorrectionFolder
from samtune.serve.images import ImageStore, UnknownImage
from samtune.serve.inference import auto_slot, predict_slot
from samtune.serve.models import Slot
from samtune.serve.schemas import (
    AutoRequest,
    EncodeRequest,
    PredictRequest,
    PromptError,
    SaveRequest,
    check_prompts,
)

STATIC = resources.files("samtune.serve") / "static"


@dataclass
class ServeState:
    """Everything the app serves: model slots, images, the corrections folder, and how the
    dataset was described at start-up."""

    slots: list[Slot]
    images: ImageStore
    corrections: CorrectionFolder
    data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def slot(self, slot_id: str) -> Slot:
        for slot in self.slots:
            if slot.id == slot_id:
                return slot
        known = ", ".join(s.id for s in self.slots)
        raise UnknownModel(f"unknown model {slot_id!r}; the models are {known}")

    def chosen(self, ids: list[str] | None) -> list[Slot]:
        """The slots named (all of them by default); a named slot that did not load is an
        error, an unnamed one is skipped."""
        if ids is None:
            return [s for s in self.slots if s.ready]
        chosen = [self.slot(i) for i in ids]
        for slot in chosen:
            if not slot.ready:
                raise ModelUnavailable(f"model {slot.id} did not load: {slot.error}")
        return chosen


class UnknownModel(SamtuneError):
    """No model slot has this id."""


class ModelUnavailable(SamtuneError):
    """The model slot exists but its model failed to load."""


class NotFound(SamtuneError):
    """A report or report file that does not exist."""


class MaskError(SamtuneError):
    """A mask sent for saving cannot be decoded or does not fit the image."""


_STATUS = {UnknownImage: 404, UnknownModel: 404, NotFound: 404, ModelUnavailable: 503,
           PromptError: 422, MaskError: 422}


def create_app(state: ServeState) -> FastAPI:
    """The app over ``state``; run it with uvicorn (:func:`samtune.serve.server.serve`) or
    call it in-process with FastAPI's ``TestClient``."""
    app = FastAPI(title="samtune serve", docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.serve = state

    @app.exception_handler(SamtuneError)
    async def _user_error(request: Request, exc: SamtuneError) -> JSONResponse:
        status = getattr(exc, "status", None) or next(
            (code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if p != "body")
            message = str(err["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {message}" if where else message)
        return JSONResponse({"error": "; ".join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {exc}); the "
                                      "server keeps running"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response((STATIC / "index.html").read_text(encoding="utf-8"),
                        media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/info")
    def info() -> dict:
        counts = state.corrections.counts()
        return {
            "models": [s.describe() for s in state.slots],
            "data": state.data,
            "images": len(state.images.entries()),
            "corrections": {"folder": str(state.corrections.root), "images": counts.images,
                            "objects": counts.objects},
            "limits": {"upload_bytes": state.images.max_upload_bytes,
                       "pixels": state.images.max_pixels},
            **state.extra,
        }

    @app.get("/api/images")
    def list_images() -> list[dict]:
        return [{"id": e.id, "name": e.name, "kind": e.kind} for e in state.images.entries()]

    @app.post("/api/images")
    async def upload(file: UploadFile = File(...)) -> dict:
        # one byte past the limit is enough to refuse it without reading all of a huge file
        data = await file.read(state.images.max_upload_bytes + 1)
        entry = state.images.add_upload(file.filename or "upload", data)
        return image_info(entry.id)

    @app.get("/api/images/{image_id}")
    def image_info(image_id: str) -> dict:
        opened = state.images.open(image_id)
        h, w = opened.size
        truth = None
        if opened.truth is not None:
            truth = encode_coco_rles(opened.truth.object_masks())
        return {"id": image_id, "name": opened.entry.name, "kind": opened.entry.kind,
                "width": w, "height": h, "truth": truth,
                "saved": state.corrections.object_ids(opened.entry.stem)}

    @app.get("/api/images/{image_id}/image.png")
    def image_png(image_id: str) -> Response:
        import io

        from PIL import Image

        opened = state.images.open(image_id)
        buffer = io.BytesIO()
        Image.fromarray(opened.image).save(buffer, format="PNG", compress_level=1)
        return Response(buffer.getvalue(), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/encode")
    def encode(body: EncodeRequest) -> dict:
        opened = state.images.open(body.image)
        out = []
        for slot in state.chosen(body.models):
            with slot.lock:
                _, ms = slot.predictor(opened.entry.id, opened.image)
            out.append({"model": slot.id, "encode_ms": None if ms is None else round(ms, 1)})
        return {"image": body.image, "results": out}

    @app.post("/api/predict")
    def predict(body: PredictRequest) -> dict:
        opened = state.images.open(body.image)
        check_prompts(body, opened.size)
        results = [predict_slot(slot, opened, body) for slot in state.chosen(body.models)]
        return {"image": body.image, "size": list(opened.size), "results": results}

    @app.post("/api/auto")
    def auto(body: AutoRequest) -> dict:
        opened = state.images.open(body.image)
        results = [auto_slot(slot, opened, body) for slot in state.chosen(body.models)]
        return {"image": body.image, "size": list(opened.size), "results": results}

    @app.get("/api/masks")
    def masks_summary() -> dict:
        counts = state.corrections.counts()
        return {"folder": str(state.corrections.root), "images": counts.images,
                "objects": counts.objects}

    @app.get("/api/masks/{image_id}")
    def saved_masks(image_id: str) -> dict:
        entry = state.images.entry(image_id)
        label_map = state.corrections.label_map(entry.stem)
        ids = state.corrections.object_ids(entry.stem)
        masks = [] if label_map is None else encode_coco_rles(
            label_map[None] == _column(ids))
        return {"image": image_id, "file": f"masks/{entry.stem}.png",
                "objects": [{"id": i, "mask": m} for i, m in zip(ids, masks)]}

    @app.post("/api/masks")
    def save_mask(body: SaveRequest) -> dict:
        opened = state.images.open(body.image)
        if body.model is not None:
            state.slot(body.model)
        mask = _decode_mask(body.mask, opened.size)
        object_id = state.corrections.add(opened.entry.stem, opened.image, mask)
        counts = state.corrections.counts()
        return {"image": body.image, "object": object_id, "file": f"masks/{opened.entry.stem}.png",
                "folder": str(state.corrections.root), "images": counts.images,
                "objects": counts.objects}

    @app.delete("/api/masks/{image_id}/{object_id}")
    def delete_mask(image_id: str, object_id: int) -> dict:
        entry = state.images.entry(image_id)
        state.corrections.remove(entry.stem, object_id)
        counts = state.corrections.counts()
        return {"image": image_id, "removed": object_id, "images": counts.images,
                "objects": counts.objects}

    @app.get("/api/report/{model_id}")
    def report(model_id: str) -> dict:
        eval_dir = _eval_dir(state.slot(model_id))
        metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
        base = f"/api/report/{model_id}/files"
        return {"model": model_id, "folder": str(eval_dir), "metrics": metrics,
                "plots": _pngs(eval_dir, "plots", base),
                "comparisons": _pngs(eval_dir, "comparisons", base),
                "report_md": f"{base}/report.md" if (eval_dir / "report.md").is_file() else None}

    @app.get("/api/report/{model_id}/files/{path:path}")
    def report_file(model_id: str, path: str) -> FileResponse:
        eval_dir = _eval_dir(state.slot(model_id)).resolve()
        target = (eval_dir / path).resolve()
        if not target.is_relative_to(eval_dir) or not target.is_file():
            raise NotFound(f"no file {path!r} in the report of {model_id}")
        return FileResponse(target)

    return app


def _column(ids: list[int]) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64)[:, None, None]


def _decode_mask(rle: dict, size: tuple[int, int]):
    """An RLE from the request -> (H, W) bool, checked against the image size."""
    try:
        h, w = (int(v) for v in rle["size"])
        mask = decode_rle(rle)
    except (KeyError, TypeError, ValueError, UnicodeError) as e:
        raise MaskError(f"mask: not an RLE ({{'size': [H, W], 'counts': ...}}): {e}") from None
    if (h, w) != tuple(size) or mask.shape != tuple(size):
        raise MaskError(f"mask: size {w}x{h} does not match the image ({size[1]}x{size[0]})")
    return mask


def _pngs(eval_dir: Path, folder: str, base: str) -> list[str]:
    """URLs of the PNGs in one folder of a report."""
    return [f"{base}/{folder}/{p.name}" for p in sorted((eval_dir / folder).glob("*.png"))]


def _eval_dir(slot: Slot) -> Path:
    if slot.run_dir is None:
        raise UnknownModel(f"model {slot.id} is not a run folder, so it has no eval report")
    eval_dir = report_folder(slot.run_dir)
    if eval_dir is None:
        raise NotFound(f"{slot.run_dir / 'eval'}: no eval report yet; run `samtune eval "
                           f"{slot.run_dir}` and reload the page")
    return eval_dir
