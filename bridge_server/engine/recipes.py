"""Task -> ACE++ input recipe: canvas, mask, repainting scale, adapter, token fit and the crop back.

numpy + PIL, and OpenCV for the local-edit annotators (the authors' scepter annotators call OpenCV; cv2 is a
daemon-only dependency, never imported by shared/ or the editor plugins).

One function per task, each following a rule of the authors' preprocessing (ali-vilab/ACE_plus `f3e410b`,
`inference/utils.py::ACEPlusImageProcessor`, see docs in shared/reference/ace_plus.md), in the authors' order:

1. flatten transparent pixels over white (the authors' inputs are RGB files, white where nothing was painted);
2. run the local-edit annotator (canny/mosaic/recolor, OpenCV as scepter calls it) on the whole image and
   composite it inside the SOFT mask (`Image.composite(structure, image, mask)`, as the authors' `edit_preprocess`);
3. centre-crop anything beyond 4:1 (exclusive), image AND mask alike; normalise to [-1, 1]; binarise the mask
   (> 128); a missing or all-zero mask becomes a full mask;
4. `edit *= 1 - mask * repainting_scale`; without an edit image the target is zeros (mid-grey) with a full mask;
5. resize the reference (bilinear, antialiased) to the edit height and put it LEFT of the edit, mask 0 there;
6. ONE nearest-exact resize of the whole canvas to the token budget, floored to multiples of 16, never upscaled.

Deliberate differences from the authors' code (an editor needs pixel alignment):
- the crop back is at the TRUE reference/edit boundary after the resize (the authors floor `slice_w` separately,
  e.g. 448 instead of 461, and then add 30 px); `crop_offset` restores their +30 when asked for;
- the result is resized back to the exact region size (also without a reference) and parts that the 4:1 crop
  removed are restored from the original region;
- the mask is cropped together with the image beyond 4:1 (the authors' code crashes there);
- mosaic shrinks a side shorter than 64 px to 1 px (the authors' size 0 makes OpenCV raise).

Canvas convention: `Plan.canvas` is float32 HxWx3 in [-1, 1] (0 = mid-grey), `Plan.mask` float32 HxW with 0/1
(1 = generate). For the FFT model `canvas` is the "edit" input (canvas x (1 - mask)) and `change` is canvas x mask.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ace_protocol.errors import ErrorCode, ProtocolError
from PIL import Image

from bridge_server.engine.base import EngineError, EngineJob

DEFAULT_MAX_TOKENS = 4096  # both authors' inference paths use 4096 (the class default 2048 is overridden)
TOKEN_PATCH = 16  # VAE factor 8 x 2x2 packing: one image token per 16x16 pixels
MAX_ASPECT = 4.0  # authors' `image_check`: centre-crop beyond 4:1, exclusive
MASK_THRESHOLD = 128  # strictly greater than 128 is masked
FLATTEN_BACKGROUND = 255  # transparent pixels are flattened over white (the authors' RGB inputs)
LOCAL_EDIT_SCALE = 0.5  # repainting scale of the structure-keeping local-edit modes with the LoRA
MOSAIC_RATIO = 64  # scepter ColorAnnotator ratio
CANNY_LOW, CANNY_HIGH = 100, 200  # authors' canny_repainting thresholds

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass
class Plan:
    """Everything the engine needs for one job, and everything needed to map the result back to the region."""

    task: str
    prompt: str
    canvas: np.ndarray  # float32 HxWx3 in [-1, 1]; FFT: the edit input canvas x (1 - mask)
    mask: np.ndarray  # float32 HxW, 1 = generate
    change: np.ndarray | None  # FFT only: canvas x mask, float32 HxWx3 in [-1, 1]
    repainting_scale: float
    adapter: str | None  # 'subject' | 'portrait' | 'local' | None
    transformer: str  # 'fill' | 'fft'
    max_tokens: int
    reference_columns: tuple[int, int] | None  # [x0, x1) in canvas pixels
    edit_columns: tuple[int, int]  # [x0, x1) true boundary in canvas pixels
    crop: Box  # the part of the model output that becomes the result, canvas pixels
    output: tuple[int, int]  # region width, height
    mode: str = "repaint"
    # For inputs beyond 4:1: the flattened region (uint8 RGB) and where the model's part sits inside it.
    region_rgb: np.ndarray | None = field(default=None, repr=False)
    region_box: Box | None = None

    @property
    def width(self) -> int:
        return int(self.canvas.shape[1])

    @property
    def height(self) -> int:
        return int(self.canvas.shape[0])

    @property
    def image_tokens(self) -> int:
        return (self.width // TOKEN_PATCH) * (self.height // TOKEN_PATCH)

    def info(self) -> dict[str, Any]:
        """The recipe numbers, JSON-able (provenance and dry runs)."""
        x, y, w, h = self.crop
        return {
            "task": self.task,
            "canvas": {"width": self.width, "height": self.height},
            "image_tokens": self.image_tokens,
            "max_tokens": self.max_tokens,
            "reference_columns": list(self.reference_columns) if self.reference_columns else None,
            "edit_columns": list(self.edit_columns),
            "repainting_scale": self.repainting_scale,
            "adapter": self.adapter,
            "transformer": self.transformer,
            "mode": self.mode,
            "crop": {"x": x, "y": y, "width": w, "height": h},
            "output": {"width": self.output[0], "height": self.output[1]},
        }

    def postprocess(self, model_rgb: np.ndarray) -> np.ndarray:
        """Model output (canvas-size uint8 RGB) -> region-size uint8 RGB.

        Crops at the true boundary (+crop_offset), resizes back to the exact size of the part the model saw, and
        pastes that into the original region when the 4:1 crop removed something (those ends come back unchanged).
        """
        if model_rgb.shape[:2] != (self.height, self.width):
            raise ValueError(f"model output {model_rgb.shape[1]}x{model_rgb.shape[0]} is not the canvas size")
        x, y, w, h = self.crop
        part = np.ascontiguousarray(model_rgb[y : y + h, x : x + w, :3])
        if self.region_box is None:
            target = self.output
        else:
            target = (self.region_box[2], self.region_box[3])
        if (part.shape[1], part.shape[0]) != target:
            part = np.asarray(Image.fromarray(part).resize(target, Image.Resampling.BICUBIC))
        if self.region_box is None or self.region_rgb is None:
            return part
        out = self.region_rgb.copy()
        bx, by, bw, bh = self.region_box
        out[by : by + bh, bx : bx + bw] = part
        return out


# ----------------------------------------------------------------------------------------------------------------
# Small pure helpers


def _bad(message: str) -> EngineError:
    return EngineError(ErrorCode.BAD_REQUEST, message)


def flatten_rgb(image: np.ndarray) -> np.ndarray:
    """HxWx{3,4} uint8 -> HxWx3 uint8; straight alpha is flattened over white.

    The authors feed RGB images read from files, where a part with nothing painted is white; a layer with holes
    (common in painting) must therefore look like that to the model, not like mid-grey (which means "generate")."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise _bad(f"image must be HxWx3 or HxWx4 uint8, got shape {image.shape} {image.dtype}")
    if image.shape[2] == 3:
        return image
    rgb = image[..., :3].astype(np.float32)
    alpha = image[..., 3:4].astype(np.float32) / 255.0
    return np.clip(np.rint(rgb * alpha + FLATTEN_BACKGROUND * (1.0 - alpha)), 0, 255).astype(np.uint8)


def aspect_crop_box(width: int, height: int) -> Box:
    """The authors' centre crop beyond 4:1 (exclusive: exactly 4:1 is kept); torchvision's rounding of offsets."""
    if height / width > MAX_ASPECT:
        ch = int(MAX_ASPECT * width)
        return 0, int(round((height - ch) / 2.0)), width, ch
    if width / height > MAX_ASPECT:
        cw = int(MAX_ASPECT * height)
        return int(round((width - cw) / 2.0)), 0, cw, height
    return 0, 0, width, height


def binarise_mask(mask: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """> 128 -> 1. Missing or all-zero -> full mask (the authors' rule)."""
    if mask is None:
        return np.ones((height, width), np.float32)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != (height, width):
        raise _bad(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}")
    binary = (mask > MASK_THRESHOLD).astype(np.float32)
    if not binary.any():
        return np.ones((height, width), np.float32)
    return binary


def to_signed(rgb: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] (to_tensor + normalize(0.5, 0.5))."""
    return rgb.astype(np.float32) / 127.5 - 1.0


def to_uint8(signed: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((signed + 1.0) * 127.5), 0, 255).astype(np.uint8)


def fit_size(width: int, height: int, max_tokens: int) -> tuple[int, int]:
    """The authors' token cap: scale = min(1, sqrt(budget / tokens)), then floor each side to a multiple of 16."""
    scale = min(1.0, math.sqrt(max_tokens / ((height / TOKEN_PATCH) * (width / TOKEN_PATCH))))
    return int(width * scale) // TOKEN_PATCH * TOKEN_PATCH, int(height * scale) // TOKEN_PATCH * TOKEN_PATCH


def nearest_exact_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index for nearest-exact (pixel centres), as torch's `nearest-exact`."""
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_nearest_exact(array: np.ndarray, width: int, height: int) -> np.ndarray:
    rows = nearest_exact_index(array.shape[0], height)
    cols = nearest_exact_index(array.shape[1], width)
    return array[rows][:, cols]


def resize_bilinear(signed: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased bilinear resize of a [-1, 1] float image (PIL's BILINEAR filter widens when downscaling)."""
    if (signed.shape[1], signed.shape[0]) == (width, height):
        return signed
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(signed[..., c], np.float32)).resize((width, height), Image.BILINEAR)
        )
        for c in range(signed.shape[2])
    ]
    return np.stack(channels, axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Local-edit annotators (computed in process; run on the whole image, used only inside the mask)


def canny(rgb: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """scepter CannyAnnotator: `cv2.Canny(image, 100, 200)` on the RGB uint8 array, white edges on black, RGB.

    No grey conversion first: on a 3-channel image OpenCV takes, per pixel, the channel with the largest gradient.
    """
    edges = cv2.Canny(np.ascontiguousarray(rgb, np.uint8), low, high)
    return np.repeat(edges[..., None], 3, axis=2)


def mosaic(rgb: np.ndarray, ratio: int = MOSAIC_RATIO) -> np.ndarray:
    """scepter ColorAnnotator: OpenCV bicubic down to (w // ratio, h // ratio) (no antialiasing), nearest back up.

    Deliberate difference: a side shorter than `ratio` shrinks to 1 pixel; the authors' size 0 makes OpenCV raise.
    """
    h, w = rgb.shape[:2]
    small = cv2.resize(
        np.ascontiguousarray(rgb, np.uint8), (max(1, w // ratio), max(1, h // ratio)), interpolation=cv2.INTER_CUBIC
    )
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).reshape(rgb.shape)


def recolor(rgb: np.ndarray) -> np.ndarray:
    """scepter GrayAnnotator: `cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)` replicated to 3 channels.

    The authors apply OpenCV's BGR-to-grey to RGB data, so red gets 0.114 and blue 0.299 (the textbook formula is
    the other way round). The model was trained and evaluated on that grey, so we reproduce it on purpose.
    """
    g = cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_BGR2GRAY)
    return np.repeat(g[..., None], 3, axis=2)


def composite_soft(structure: np.ndarray, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The authors' `Image.composite(structure, image, mask)` with the soft 'L' mask (0..255), not a binarised one:
    round((structure * m + image * (255 - m)) / 255) per channel."""
    top, bottom = Image.fromarray(np.ascontiguousarray(structure)), Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(Image.composite(top, bottom, Image.fromarray(mask, "L")))


def soft_mask(mask: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """The selection as uint8 HxW 0..255 for the annotator composite; full (255) where the binarised mask would be
    full because nothing is selected above 128 (so the structure image and the canvas mask agree)."""
    if mask is None:
        return np.full((height, width), 255, np.uint8)
    m = np.clip(np.rint(mask), 0, 255).astype(np.uint8) if mask.dtype != np.uint8 else mask
    if not (m > MASK_THRESHOLD).any():
        return np.full((height, width), 255, np.uint8)
    return np.ascontiguousarray(m)


ANNOTATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"canny": canny, "mosaic": mosaic, "recolor": recolor}


# ----------------------------------------------------------------------------------------------------------------
# The common builder


@dataclass
class _Inputs:
    task: str
    prompt: str
    adapter: str | None
    transformer: str
    scale: float
    max_tokens: int
    crop_offset: int
    image: np.ndarray | None  # uint8 RGBA/RGB region
    mask: np.ndarray | None
    reference: np.ndarray | None
    size: tuple[int, int]  # output size when there is no image
    mode: str = "repaint"


def _build(inp: _Inputs) -> Plan:
    region_rgb = None
    region_box = None
    if inp.image is not None:
        rgb_full = flatten_rgb(inp.image)
        fh, fw = rgb_full.shape[:2]
        mask_full = inp.mask
        if mask_full is not None and mask_full.ndim == 3:
            mask_full = mask_full[..., 0]
        if mask_full is not None and mask_full.shape != (fh, fw):
            raise _bad(f"mask is {mask_full.shape[1]}x{mask_full.shape[0]} but the image is {fw}x{fh}")
        model_rgb = rgb_full
        if inp.mode != "repaint":
            # The authors' order: annotate the whole (uncropped) image, composite with the soft mask, then check 4:1.
            control = ANNOTATORS[inp.mode](rgb_full)
            model_rgb = composite_soft(control, rgb_full, soft_mask(mask_full, fh, fw))
        bx, by, bw, bh = aspect_crop_box(fw, fh)
        if (bw, bh) != (fw, fh):
            # Crop image and mask alike; the ends come back from the original in postprocess.
            region_rgb, region_box = rgb_full, (bx, by, bw, bh)
        rgb = model_rgb[by : by + bh, bx : bx + bw]
        crop_mask = None if mask_full is None else mask_full[by : by + bh, bx : bx + bw]
        mask = binarise_mask(crop_mask, bh, bw)
        edit = to_signed(rgb)
        output = (fw, fh)
    else:
        w, h = inp.size
        if max(w / h, h / w) > MAX_ASPECT:
            raise _bad(f"width x height {w}x{h} is beyond 4:1; ACE++ accepts at most 4:1")
        edit = np.zeros((h, w, 3), np.float32)
        mask = np.ones((h, w), np.float32)
        output = (w, h)

    edit = edit * (1.0 - mask[..., None] * inp.scale)
    eh = edit.shape[0]
    slice_w = 0
    if inp.reference is not None:
        ref = flatten_rgb(inp.reference)
        rx, ry, rw, rh = aspect_crop_box(ref.shape[1], ref.shape[0])
        ref = to_signed(ref[ry : ry + rh, rx : rx + rw])
        ref = resize_bilinear(ref, int(rw * (eh / rh)), eh)
        slice_w = ref.shape[1]
        edit = np.concatenate([ref, edit], axis=1)
        mask = np.concatenate([np.zeros((eh, slice_w), np.float32), mask], axis=1)

    full_h, full_w = edit.shape[:2]
    rw_, rh_ = fit_size(full_w, full_h, inp.max_tokens)
    cols = nearest_exact_index(full_w, rw_) if rw_ > 0 else np.zeros(0, np.int64)
    boundary = int(np.count_nonzero(cols < slice_w))  # true reference/edit boundary after the one resize
    if rh_ < TOKEN_PATCH or rw_ - boundary < TOKEN_PATCH:
        raise _bad(
            f"the region ({output[0]}x{output[1]}) is too small after fitting {inp.max_tokens} tokens; "
            f"ACE++ needs at least {TOKEN_PATCH} px of edit area"
        )
    canvas = resize_nearest_exact(edit, rw_, rh_)
    mask = resize_nearest_exact(mask, rw_, rh_)
    change = None
    if inp.transformer == "fft":
        # use_change: the content under the mask goes into the "change" channels, the rest stays in "edit".
        change = canvas * mask[..., None]
        canvas = canvas * (1.0 - mask[..., None])
    x0 = min(boundary + inp.crop_offset, rw_ - TOKEN_PATCH)
    return Plan(
        task=inp.task,
        prompt=inp.prompt,
        canvas=canvas.astype(np.float32),
        mask=mask.astype(np.float32),
        change=None if change is None else change.astype(np.float32),
        repainting_scale=inp.scale,
        adapter=inp.adapter,
        transformer=inp.transformer,
        max_tokens=inp.max_tokens,
        reference_columns=(0, boundary) if slice_w else None,
        edit_columns=(boundary, rw_),
        crop=(x0, 0, rw_ - x0, rh_),
        output=output,
        mode=inp.mode,
        region_rgb=region_rgb,
        region_box=region_box,
    )


# ----------------------------------------------------------------------------------------------------------------
# One recipe per task


def _need(value: Any, what: str, task: str) -> Any:
    if value is None:
        raise _bad(f"task '{task}' needs {what}")
    return value


def subject(prompt: str, reference: np.ndarray, *, width: int = 1024, height: int = 1024, **common: Any) -> Plan:
    """Reference -> new scene. Subject LoRA, blank (zero) target of the requested size, full mask, scale 1."""
    return _build(
        _Inputs(
            "subject",
            prompt,
            "subject",
            "fill",
            1.0,
            image=None,
            mask=None,
            reference=_need(reference, "a reference", "subject"),
            size=(width, height),
            **_common(common),
        )
    )


def portrait(prompt: str, reference: np.ndarray, *, width: int = 1024, height: int = 1024, **common: Any) -> Plan:
    """Face reference -> new scene keeping the identity. Portrait LoRA, blank target, full mask, scale 1."""
    return _build(
        _Inputs(
            "portrait",
            prompt,
            "portrait",
            "fill",
            1.0,
            image=None,
            mask=None,
            reference=_need(reference, "a face reference", "portrait"),
            size=(width, height),
            **_common(common),
        )
    )


def instruct(prompt: str, image: np.ndarray, **common: Any) -> Plan:
    """Instruction on the whole region. FFT model, `no_preprocess`: full mask, scale 0, content in "change"."""
    return _build(
        _Inputs(
            "instruct",
            prompt,
            None,
            "fft",
            0.0,
            image=_need(image, "an image", "instruct"),
            mask=None,
            reference=None,
            size=(0, 0),
            **_common(common),
        )
    )


def local_edit(
    prompt: str, image: np.ndarray, mask: np.ndarray | None, *, mode: str = "repaint", **common: Any
) -> Plan:
    """Masked region + instruction. Local-editing LoRA; repaint at scale 1, or canny/mosaic/recolor (annotator
    output composited inside the mask) at scale 0.5 so the structure survives at half contrast."""
    if mode not in ("repaint", *ANNOTATORS):
        raise _bad(f"local_edit mode must be repaint, canny, mosaic or recolor, got {mode!r:.40}")
    scale = 1.0 if mode == "repaint" else LOCAL_EDIT_SCALE
    return _build(
        _Inputs(
            "local_edit",
            prompt,
            "local",
            "fill",
            scale,
            image=_need(image, "an image", "local_edit"),
            mask=mask,
            reference=None,
            size=(0, 0),
            mode=mode,
            **_common(common),
        )
    )


def reference_edit(
    prompt: str, image: np.ndarray, mask: np.ndarray | None, reference: np.ndarray, *, face: bool = False, **common: Any
) -> Plan:
    """Masked region + reference (logo, try-on, face swap). Subject LoRA, portrait LoRA for faces; scale 1."""
    return _build(
        _Inputs(
            "reference_edit",
            prompt,
            "portrait" if face else "subject",
            "fill",
            1.0,
            image=_need(image, "an image", "reference_edit"),
            mask=mask,
            reference=_need(reference, "a reference", "reference_edit"),
            size=(0, 0),
            **_common(common),
        )
    )


def generate(prompt: str, *, width: int = 1024, height: int = 1024, **common: Any) -> Plan:
    """Text to image with plain Fill: zero canvas, full mask, scale 1, no LoRA."""
    return _build(
        _Inputs(
            "generate",
            prompt,
            None,
            "fill",
            1.0,
            image=None,
            mask=None,
            reference=None,
            size=(width, height),
            **_common(common),
        )
    )


def inpaint(prompt: str, image: np.ndarray, mask: np.ndarray | None, **common: Any) -> Plan:
    """Masked repaint with plain Fill: scale 1 (masked area mid-grey), no LoRA."""
    return _build(
        _Inputs(
            "inpaint",
            prompt,
            None,
            "fill",
            1.0,
            image=_need(image, "an image", "inpaint"),
            mask=mask,
            reference=None,
            size=(0, 0),
            **_common(common),
        )
    )


def _common(common: dict[str, Any]) -> dict[str, Any]:
    unknown = set(common) - {"max_tokens", "crop_offset"}
    if unknown:
        raise TypeError(f"unknown recipe options {sorted(unknown)}")
    max_tokens = int(common.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens < TOKEN_PATCH:
        raise _bad(f"max_tokens must be at least {TOKEN_PATCH}, got {max_tokens}")
    return {"max_tokens": max_tokens, "crop_offset": int(common.get("crop_offset", 0))}


RECIPES: dict[str, Callable[..., Plan]] = {
    "subject": subject,
    "portrait": portrait,
    "instruct": instruct,
    "local_edit": local_edit,
    "reference_edit": reference_edit,
    "generate": generate,
    "inpaint": inpaint,
}


def plan_for_job(job: EngineJob, *, max_tokens_limit: int = 16384) -> Plan:
    """The single entry used by the engine and by `--dry-run`: EngineJob -> Plan (raises bad_request/unknown_task)."""
    params = job.params or {}
    max_tokens = int(params.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens > max_tokens_limit:
        raise _bad(f"max_tokens {max_tokens} is above this server's limit of {max_tokens_limit}")
    common = {"max_tokens": max_tokens, "crop_offset": int(params.get("crop_offset", 0))}
    ref = job.references[0] if job.references else None
    if len(job.references) > 1:
        raise _bad("ACE++ takes one reference image")
    width = int(params.get("width", job.width))
    height = int(params.get("height", job.height))
    task = job.task
    if task == "subject":
        return subject(job.prompt, ref, width=width, height=height, **common)
    if task == "portrait":
        return portrait(job.prompt, ref, width=width, height=height, **common)
    if task == "instruct":
        return instruct(job.prompt, job.image, **common)
    if task == "local_edit":
        return local_edit(job.prompt, job.image, job.mask, mode=str(params.get("mode", "repaint")), **common)
    if task == "reference_edit":
        return reference_edit(job.prompt, job.image, job.mask, ref, face=bool(params.get("face", False)), **common)
    if task == "generate":
        return generate(job.prompt, width=width, height=height, **common)
    if task == "inpaint":
        return inpaint(job.prompt, job.image, job.mask, **common)
    raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"unknown task {task!r:.40}; known: {', '.join(RECIPES)}")


# ----------------------------------------------------------------------------------------------------------------
# Dry run


PLAN_SCHEMA = 1


def plan_json(plan: Plan) -> dict[str, Any]:
    x, y, w, h = plan.crop
    return {
        "schema": PLAN_SCHEMA,
        "task": plan.task,
        "canvas": {"width": plan.width, "height": plan.height},
        "image_tokens": plan.image_tokens,
        "reference_columns": list(plan.reference_columns) if plan.reference_columns else None,
        "edit_columns": list(plan.edit_columns),
        "repainting_scale": plan.repainting_scale,
        "adapter": plan.adapter,
        "transformer": plan.transformer,
        "crop": {"x": x, "y": y, "width": w, "height": h},
        "output": {"width": plan.output[0], "height": plan.output[1]},
    }


def write_dry_run(out_dir: Path, plan: Plan) -> list[Path]:
    """Write canvas.png, mask.png (0/255), change.png (FFT only) and plan.json; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "canvas.png", out_dir / "mask.png"]
    Image.fromarray(to_uint8(plan.canvas)).save(written[0])
    Image.fromarray((plan.mask > 0.5).astype(np.uint8) * 255).save(written[1])
    if plan.change is not None:
        written.append(out_dir / "change.png")
        Image.fromarray(to_uint8(plan.change)).save(written[-1])
    written.append(out_dir / "plan.json")
    written[-1].write_text(json.dumps(plan_json(plan), indent=2) + "\n", encoding="utf-8")
    return written
