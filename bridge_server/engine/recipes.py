"""Task -> ACE++ input recipe: canvas, mask, repainting scale, adapter, token fit and the crop back.

numpy + PIL, and OpenCV for the local-edit annotators (the authors' scepter annotators call OpenCV; cv2 is a
daemon-only dependency, never imported by shared/ or the editor plugins).

One function per task, each following a rule of the authors' preprocessing (ali-vilab/ACE_plus `f3e410b`,
`inference/utils.py::ACEPlusImageProcessor`), in the authors' order:

1. flatten transparent pixels over white (the authors' inputs are RGB files, white where nothing was painted);
2. run the local-edit annotator (canny/mosaic/recolor, OpenCV as scepter calls it; contour/depth, the authors'
   networks, through the `annotate` callable the engine passes in, see engine/annotators/) on the whole image and
   composite it inside the SOFT mask (`Image.composite(structure, image, mask)`, as the authors' `edit_preprocess`);
   `no_preprocess` (the authors' edit type for a user's own depth/contour/sketch image) composites the job's control
   image there instead, or keeps the image itself as the guide when no control image is sent;
3. centre-crop anything beyond 4:1 (exclusive), image AND mask alike; normalise to [-1, 1]; binarise the mask
   (> 128); a missing or all-zero mask becomes a full mask;
4. `edit *= 1 - mask * repainting_scale`; without an edit image the target is zeros (mid-grey) with a full mask;
5. resize the reference (bilinear, antialiased) to the edit height and put it LEFT of the edit, mask 0 there;
   FFT tasks with `keep_pixels` (their infer_fft.py default, rate 0.8): shrink the reference only when it is at
   least rate x edit height tall (to int(rate x edit height)), then pad it with 0 (mid-grey) to the edit height,
   the smaller half on top; several references are placed side by side in the order given, each by the same rule,
   the edit last (`[ref1 | ref2 | ... | edit]`, as the authors' training data concatenates reference contexts);
6. ONE nearest-exact resize of the whole canvas to the token budget, floored to multiples of 16, never upscaled.

Deliberate differences from the authors' code (an editor needs pixel alignment):
- the crop back is at the TRUE reference/edit boundary after the resize (the authors floor `slice_w` separately,
  e.g. 448 instead of 461, and then add 30 px); `crop_offset` restores their +30 when asked for;
- the result is resized back to the exact region size (also without a reference) and parts that the 4:1 crop
  removed are restored from the original region;
- the mask is cropped together with the image beyond 4:1 (the authors' code crashes there);
- mosaic shrinks a side shorter than 64 px to 1 px (the authors' size 0 makes OpenCV raise);
- a control image of another size than the region is resized to it (bilinear) before the composite.

Repainting scales, as the authors set them: local-editing LoRA 1.0 for repaint and 0.5 for every structure mode
(models/model_zoo.yaml LOCAL_EDITING.REPAINTING_SCALE, used by demo_lora.py for each of its edit types); FFT edit
types 1.0 for repainting and 0.0 for all others (config/ace_plus_fft.yaml PREPROCESSOR). Both demos let the user
override the scale (a 0-1 slider): the `repainting_scale` parameter.

Canvas convention: `Plan.canvas` is float32 HxWx3 in [-1, 1] (0 = mid-grey), `Plan.mask` float32 HxW with 0/1
(1 = generate). For the FFT model `canvas` is the "edit" input (canvas x (1 - mask)) and `change` is canvas x mask.
"""

from __future__ import annotations

import dataclasses
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
KEEP_PIXELS_RATE = 0.8  # the FFT path's keep_pixels_rate (infer_fft.py, demo_fft.py, the ComfyUI FFT processor)
FFT_REPAINT_SCALE, FFT_KEEP_SCALE = 1.0, 0.0  # config/ace_plus_fft.yaml: repainting 1.0, every other edit type 0.0
MAX_REFERENCES = 4  # as the protocol (messages.MAX_REFERENCES); the model was trained with one
LOCAL_EDIT_MODES = ("repaint", "canny", "mosaic", "recolor", "contour", "depth", "no_preprocess")
FFT_ANNOTATORS = ("none", "mosaic", "contour", "depth")  # fft_control
#: Modes whose annotator is a network with downloaded weights (engine/annotators), not an OpenCV call.
NETWORK_ANNOTATORS = ("contour", "depth")
ANNOTATOR_PULL_HINT = "run `ace-bridge models pull --annotators`"
CANNY_LOW, CANNY_HIGH = 100, 200  # authors' canny_repainting thresholds

Box = tuple[int, int, int, int]  # x, y, width, height
#: (annotator name, uint8 HxWx3 RGB) -> uint8 HxWx3 structure image; the engine's runner of the network annotators.
Annotate = Callable[[str, np.ndarray], np.ndarray]


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
    # [x0, x1) canvas columns of each reference, in the order given (their union is `reference_columns`).
    reference_spans: tuple[tuple[int, int], ...] = ()
    keep_pixels_rate: float | None = None  # FFT keep_pixels rule for the references; None: aligned to the edit height
    control: bool = False  # a control image was composited inside the mask (no_preprocess)
    # For inputs beyond 4:1: the flattened region (uint8 RGB) and where the model's part sits inside it.
    region_rgb: np.ndarray | None = field(default=None, repr=False)
    region_box: Box | None = None
    #: Image-to-image strength (1.0: generate from noise); below 1 the pipeline starts from `source`.
    strength: float = 1.0
    #: The canvas before the repainting scale greyed the mask (references included), float32 HxWx3 in [-1, 1].
    source: np.ndarray | None = field(default=None, repr=False)

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
            "references": [list(span) for span in self.reference_spans],
            "keep_pixels_rate": self.keep_pixels_rate,
            "control": self.control,
            "strength": self.strength,
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
    """Source index of each output index for nearest-exact (pixel centres), as torch's `nearest-exact` computes it
    on the CPU, where the authors' preprocessing runs: floor((i + 0.5) * scale) in float32, scale = float32(n_in) /
    n_out. (In float64 the result differs for some sizes, e.g. 768 -> 608 rows picks 10 other rows.)"""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
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
            Image.fromarray(np.ascontiguousarray(signed[..., c], np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
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
    references: list[np.ndarray]  # in the order given; placed left to right, the edit last
    size: tuple[int, int]  # output size when there is no image
    mode: str = "repaint"  # repaint | canny | mosaic | recolor | contour | depth | no_preprocess
    control: np.ndarray | None = None  # no_preprocess: the user's own structure image (uint8 RGBA/RGB)
    keep_pixels_rate: float | None = None  # FFT keep_pixels; None: references aligned to the edit height
    annotate: Annotate | None = None  # runs the contour/depth networks; None: they are not installed here


def place_reference(reference: np.ndarray, edit_height: int, keep_pixels_rate: float | None = None) -> np.ndarray:
    """One reference as the authors place it beside an edit of `edit_height` rows: [-1, 1] float, that height.

    Centre-cropped beyond 4:1 first (their `image_check`). Without keep_pixels (the LoRA path): bilinear,
    antialiased, to the edit height, width int(w * eh / h). With keep_pixels (FFT): shrunk the same way to
    int(eh * rate) rows only when h >= rate * eh, then padded with 0 (mid-grey) to eh rows, the smaller half on top
    (`T.Pad((0, d // 2, 0, d - d // 2))`)."""
    ref = flatten_rgb(reference)
    rx, ry, rw, rh = aspect_crop_box(ref.shape[1], ref.shape[0])
    signed = to_signed(ref[ry : ry + rh, rx : rx + rw])
    if keep_pixels_rate is None:
        return resize_bilinear(signed, max(1, int(rw * (edit_height / rh))), edit_height)
    if rh >= keep_pixels_rate * edit_height:
        th = int(edit_height * keep_pixels_rate)
        signed = resize_bilinear(signed, max(1, int(rw * (th / rh))), th)
    delta = edit_height - signed.shape[0]
    top = delta // 2
    return np.pad(signed, ((top, delta - top), (0, 0), (0, 0)))


def _control_rgb(control: np.ndarray, width: int, height: int) -> np.ndarray:
    """The user's control image as uint8 RGB at the region's size (flattened over white like every input)."""
    rgb = flatten_rgb(control)
    if (rgb.shape[1], rgb.shape[0]) != (width, height):
        rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
    return rgb


def _network_structure(mode: str, rgb: np.ndarray, annotate: Annotate | None) -> np.ndarray:
    """The contour/depth network's structure image of the whole region (uint8 HxWx3, the region's size)."""
    if annotate is None:
        raise EngineError(ErrorCode.MODEL_MISSING, f"mode '{mode}' needs the {mode} annotator; {ANNOTATOR_PULL_HINT}")
    out = annotate(mode, rgb)
    if out.dtype != np.uint8 or out.shape != rgb.shape:
        raise EngineError(ErrorCode.INTERNAL, f"the {mode} annotator returned {out.dtype} {out.shape}, not {rgb.shape}")
    return out


def _build(inp: _Inputs) -> Plan:
    region_rgb = None
    region_box = None
    if inp.control is not None and inp.mode != "no_preprocess":
        raise _bad(f"a control image is used only with mode no_preprocess (task '{inp.task}', mode {inp.mode})")
    if inp.image is not None:
        rgb_full = flatten_rgb(inp.image)
        fh, fw = rgb_full.shape[:2]
        mask_full = inp.mask
        if mask_full is not None and mask_full.ndim == 3:
            mask_full = mask_full[..., 0]
        if mask_full is not None and mask_full.shape != (fh, fw):
            raise _bad(f"mask is {mask_full.shape[1]}x{mask_full.shape[0]} but the image is {fw}x{fh}")
        model_rgb = rgb_full
        structure = None
        if inp.mode in ANNOTATORS:
            # The authors' order: annotate the whole (uncropped) image, composite with the soft mask, then check 4:1.
            structure = ANNOTATORS[inp.mode](rgb_full)
        elif inp.mode in NETWORK_ANNOTATORS:
            structure = _network_structure(inp.mode, rgb_full, inp.annotate)
        elif inp.mode == "no_preprocess" and inp.control is not None:
            structure = _control_rgb(inp.control, fw, fh)
        if structure is not None:
            model_rgb = composite_soft(structure, rgb_full, soft_mask(mask_full, fh, fw))
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
        if inp.control is not None:
            raise _bad(f"task '{inp.task}' has no image for a control image to guide")
        w, h = inp.size
        if max(w / h, h / w) > MAX_ASPECT:
            raise _bad(f"width x height {w}x{h} is beyond 4:1; ACE++ accepts at most 4:1")
        edit = np.zeros((h, w, 3), np.float32)
        mask = np.ones((h, w), np.float32)
        output = (w, h)

    source = edit
    edit = edit * (1.0 - mask[..., None] * inp.scale)
    eh = edit.shape[0]
    placed = [place_reference(r, eh, inp.keep_pixels_rate) for r in inp.references]
    widths = [r.shape[1] for r in placed]
    slice_w = sum(widths)
    if placed:
        edit = np.concatenate([*placed, edit], axis=1)
        source = np.concatenate([*placed, source], axis=1)
        mask = np.concatenate([np.zeros((eh, slice_w), np.float32), mask], axis=1)

    full_h, full_w = edit.shape[:2]
    rw_, rh_ = fit_size(full_w, full_h, inp.max_tokens)
    cols = nearest_exact_index(full_w, rw_) if rw_ > 0 else np.zeros(0, np.int64)
    # True boundaries after the one resize: the first canvas column that samples past each source boundary.
    edges = np.cumsum([0, *widths])
    bounds = [int(np.count_nonzero(cols < e)) for e in edges]
    boundary = bounds[-1]  # reference/edit boundary
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
        reference_spans=tuple((bounds[i], bounds[i + 1]) for i in range(len(placed))),
        keep_pixels_rate=inp.keep_pixels_rate if placed else None,
        control=inp.control is not None and inp.image is not None,
        region_rgb=region_rgb,
        region_box=region_box,
        source=resize_nearest_exact(source, rw_, rh_).astype(np.float32),
    )


# ----------------------------------------------------------------------------------------------------------------
# One recipe per task


def _need(value: Any, what: str, task: str) -> Any:
    if value is None:
        raise _bad(f"task '{task}' needs {what}")
    return value


References = np.ndarray | list[np.ndarray] | tuple[np.ndarray, ...] | None


def _refs(references: References, task: str, *, needed: bool = True) -> list[np.ndarray]:
    """One reference or several (in order), 1..MAX_REFERENCES of them (0 allowed when not `needed`)."""
    if references is None:
        refs: list[np.ndarray] = []
    elif isinstance(references, np.ndarray):
        refs = [references]
    else:
        refs = list(references)
    if needed and not refs:
        raise _bad(f"task '{task}' needs a reference image")
    if len(refs) > MAX_REFERENCES:
        raise _bad(f"task '{task}' takes at most {MAX_REFERENCES} reference images, got {len(refs)}")
    return refs


def _scale(value: float | None, default: float) -> float:
    if value is None:
        return default
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise _bad(f"repainting_scale must be between 0 and 1, got {value}")
    return value


def _keep_rate(keep_pixels: bool, rate: float) -> float | None:
    if not keep_pixels:
        return None
    rate = float(rate)
    if not 0.0 < rate <= 1.0:
        raise _bad(f"keep_pixels_rate must be above 0 and at most 1, got {rate}")
    return rate


def subject(prompt: str, reference: References, *, width: int = 1024, height: int = 1024, **common: Any) -> Plan:
    """Reference(s) -> new scene. Subject LoRA, blank (zero) target of the requested size, full mask, scale 1."""
    return _build(
        _Inputs(
            "subject",
            prompt,
            "subject",
            "fill",
            1.0,
            image=None,
            mask=None,
            references=_refs(reference, "subject"),
            size=(width, height),
            **_common(common),
        )
    )


def portrait(prompt: str, reference: References, *, width: int = 1024, height: int = 1024, **common: Any) -> Plan:
    """Face reference(s) -> new scene keeping the identity. Portrait LoRA, blank target, full mask, scale 1."""
    return _build(
        _Inputs(
            "portrait",
            prompt,
            "portrait",
            "fill",
            1.0,
            image=None,
            mask=None,
            references=_refs(reference, "portrait"),
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
            references=[],
            size=(0, 0),
            **_common(common),
        )
    )


def local_edit(
    prompt: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    mode: str = "repaint",
    repainting_scale: float | None = None,
    control: np.ndarray | None = None,
    **common: Any,
) -> Plan:
    """Masked region + instruction. Local-editing LoRA; repaint at scale 1, or canny/mosaic/recolor/contour/depth
    (annotator output composited inside the mask) at scale 0.5 so the structure survives at half contrast; no_preprocess
    composites the user's own control image there instead (or keeps the image itself as the guide), also at 0.5.
    `repainting_scale` overrides the mode's scale (the authors' demo slider)."""
    if mode not in LOCAL_EDIT_MODES:
        raise _bad(f"local_edit mode must be one of {', '.join(LOCAL_EDIT_MODES)}, got {mode!r:.40}")
    scale = _scale(repainting_scale, 1.0 if mode == "repaint" else LOCAL_EDIT_SCALE)
    return _build(
        _Inputs(
            "local_edit",
            prompt,
            "local",
            "fill",
            scale,
            image=_need(image, "an image", "local_edit"),
            mask=mask,
            references=[],
            size=(0, 0),
            mode=mode,
            control=control,
            **_common(common),
        )
    )


def reference_edit(
    prompt: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    reference: References,
    *,
    face: bool = False,
    **common: Any,
) -> Plan:
    """Masked region + reference(s) (logo, try-on, face swap). Subject LoRA, portrait LoRA for faces; scale 1."""
    return _build(
        _Inputs(
            "reference_edit",
            prompt,
            "portrait" if face else "subject",
            "fill",
            1.0,
            image=_need(image, "an image", "reference_edit"),
            mask=mask,
            references=_refs(reference, "reference_edit"),
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
            references=[],
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
            references=[],
            size=(0, 0),
            **_common(common),
        )
    )


# The FFT model's edit types (config/ace_plus_fft.yaml PREPROCESSOR), each as the authors' examples run it
# (examples.py fft_examples through infer_fft.py / demo_fft.py: use_change, keep_pixels at 0.8, guidance 50).


def _fft_edit(
    task: str,
    prompt: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    mode: str,
    scale: float,
    control: np.ndarray | None = None,
    references: list[np.ndarray] | None = None,
    keep_pixels_rate: float | None = None,
    **common: Any,
) -> Plan:
    return _build(
        _Inputs(
            task,
            prompt,
            None,
            "fft",
            scale,
            image=_need(image, "an image", task),
            mask=mask,
            references=references or [],
            size=(0, 0),
            mode=mode,
            control=control,
            keep_pixels_rate=keep_pixels_rate,
            **_common(common),
        )
    )


def fft_repaint(
    prompt: str, image: np.ndarray, mask: np.ndarray | None, *, repainting_scale: float | None = None, **common: Any
) -> Plan:
    """Regional repaint (their "repainting", e.g. "a blue hand"): the masked area greyed out (scale 1), FFT."""
    scale = _scale(repainting_scale, FFT_REPAINT_SCALE)
    return _fft_edit("fft_repaint", prompt, image, mask, mode="repaint", scale=scale, **common)


def fft_super_resolution(
    prompt: str, image: np.ndarray, mask: np.ndarray | None, *, repainting_scale: float | None = None, **common: Any
) -> Plan:
    """Masked super-resolution (their sr_tiger example, edit type no_preprocess): the blurry content stays under
    the mask at scale 0 and goes to the "change" channels; the model redraws it sharp. Nothing is upscaled here
    (nor in the authors' code): scale the layer up first, then select what to restore."""
    scale = _scale(repainting_scale, FFT_KEEP_SCALE)
    return _fft_edit("fft_super_resolution", prompt, image, mask, mode="no_preprocess", scale=scale, **common)


def fft_colorize(
    prompt: str, image: np.ndarray, mask: np.ndarray | None, *, repainting_scale: float | None = None, **common: Any
) -> Plan:
    """Colourisation (their "recolorizing"): GrayAnnotator grey composited inside the soft mask, scale 0, FFT."""
    scale = _scale(repainting_scale, FFT_KEEP_SCALE)
    return _fft_edit("fft_colorize", prompt, image, mask, mode="recolor", scale=scale, **common)


def fft_control(
    prompt: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    *,
    control: np.ndarray | None = None,
    annotator: str = "none",
    repainting_scale: float | None = None,
    **common: Any,
) -> Plan:
    """Controllable generation: the user's control image (depth, contour, sketch; their no_preprocess) composited
    inside the soft mask, or the image itself when none is sent; or their mosaic/contour/depth_repainting (the
    annotator named, run on the image). Scale 0: the structure goes to the "change" channels."""
    if annotator not in FFT_ANNOTATORS:
        raise _bad(f"fft_control annotator must be one of {', '.join(FFT_ANNOTATORS)}, got {annotator!r:.40}")
    if control is not None and annotator != "none":
        raise _bad("fft_control uses either a control image or an annotator, not both")
    mode = "no_preprocess" if annotator == "none" else annotator
    scale = _scale(repainting_scale, FFT_KEEP_SCALE)
    return _fft_edit("fft_control", prompt, image, mask, mode=mode, scale=scale, control=control, **common)


def fft_reference(
    prompt: str,
    reference: References,
    *,
    width: int = 1024,
    height: int = 1024,
    keep_pixels: bool = True,
    keep_pixels_rate: float = KEEP_PIXELS_RATE,
    **common: Any,
) -> Plan:
    """Reference-guided generation on the FFT model (their portrait/subject FFT examples): blank target of the
    requested size, full mask, scale 1, references placed by the keep_pixels rule."""
    return _build(
        _Inputs(
            "fft_reference",
            prompt,
            None,
            "fft",
            FFT_REPAINT_SCALE,
            image=None,
            mask=None,
            references=_refs(reference, "fft_reference"),
            size=(width, height),
            keep_pixels_rate=_keep_rate(keep_pixels, keep_pixels_rate),
            **_common(common),
        )
    )


def fft_reference_edit(
    prompt: str,
    image: np.ndarray,
    mask: np.ndarray | None,
    reference: References,
    *,
    repainting_scale: float | None = None,
    keep_pixels: bool = True,
    keep_pixels_rate: float = KEEP_PIXELS_RATE,
    **common: Any,
) -> Plan:
    """Reference-guided editing on the FFT model (their photo-editing, logo, try-on, face-swap FFT examples):
    masked area greyed out (scale 1), references placed by the keep_pixels rule."""
    return _fft_edit(
        "fft_reference_edit",
        prompt,
        image,
        mask,
        mode="repaint",
        scale=_scale(repainting_scale, FFT_REPAINT_SCALE),
        references=_refs(reference, "fft_reference_edit"),
        keep_pixels_rate=_keep_rate(keep_pixels, keep_pixels_rate),
        **common,
    )


def _common(common: dict[str, Any]) -> dict[str, Any]:
    unknown = set(common) - {"max_tokens", "crop_offset", "annotate"}
    if unknown:
        raise TypeError(f"unknown recipe options {sorted(unknown)}")
    max_tokens = int(common.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens < TOKEN_PATCH:
        raise _bad(f"max_tokens must be at least {TOKEN_PATCH}, got {max_tokens}")
    return {
        "max_tokens": max_tokens,
        "crop_offset": int(common.get("crop_offset", 0)),
        "annotate": common.get("annotate"),
    }


RECIPES: dict[str, Callable[..., Plan]] = {
    "subject": subject,
    "portrait": portrait,
    "instruct": instruct,
    "local_edit": local_edit,
    "reference_edit": reference_edit,
    "generate": generate,
    "inpaint": inpaint,
    "fft_repaint": fft_repaint,
    "fft_super_resolution": fft_super_resolution,
    "fft_colorize": fft_colorize,
    "fft_control": fft_control,
    "fft_reference": fft_reference,
    "fft_reference_edit": fft_reference_edit,
}
#: Tasks whose `references` carry one control image for the mask (the task table's reference_kind "control").
CONTROL_TASKS = ("local_edit", "fft_control")
#: Tasks that take reference images beside the edit.
REFERENCE_TASKS = ("subject", "portrait", "reference_edit", "fft_reference", "fft_reference_edit")


def plan_for_job(job: EngineJob, *, max_tokens_limit: int = 16384, annotate: Annotate | None = None) -> Plan:
    """The single entry used by the engine and by `--dry-run`: EngineJob -> Plan (raises bad_request/unknown_task;
    model_missing for the contour/depth modes without `annotate`, the runner of those networks)."""
    plan = _plan_for_job(job, max_tokens_limit=max_tokens_limit, annotate=annotate)
    strength = float((job.params or {}).get("strength", 1.0))
    if not 0.0 < strength <= 1.0:
        raise _bad(f"strength must be above 0 and at most 1, got {strength}")
    if strength < 1.0:
        if job.image is None:
            raise _bad(f"strength below 1 refines an image inside its mask; task '{job.task}' got no image")
        plan = dataclasses.replace(plan, strength=strength)
    return plan


def _plan_for_job(job: EngineJob, *, max_tokens_limit: int, annotate: Annotate | None) -> Plan:
    params = job.params or {}
    max_tokens = int(params.get("max_tokens", DEFAULT_MAX_TOKENS))
    if max_tokens > max_tokens_limit:
        raise _bad(f"max_tokens {max_tokens} is above this server's limit of {max_tokens_limit}")
    common: dict[str, Any] = {
        "max_tokens": max_tokens,
        "crop_offset": int(params.get("crop_offset", 0)),
        "annotate": annotate,
    }
    task = job.task
    if task not in RECIPES:
        raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"unknown task {task!r:.40}; known: {', '.join(RECIPES)}")
    refs = list(job.references or [])
    control = None
    if task in CONTROL_TASKS:
        if len(refs) > 1:
            raise _bad(f"task '{task}' takes at most one control image (as its reference), got {len(refs)}")
        control = refs[0] if refs else None
    elif task not in REFERENCE_TASKS and refs:
        raise _bad(f"task '{task}' takes no reference image, got {len(refs)}")
    width = int(params.get("width", job.width))
    height = int(params.get("height", job.height))
    scale = params.get("repainting_scale")
    keep: dict[str, Any] = {
        "keep_pixels": bool(params.get("keep_pixels", True)),
        "keep_pixels_rate": float(params.get("keep_pixels_rate", KEEP_PIXELS_RATE)),
    }
    if task == "subject":
        return subject(job.prompt, refs, width=width, height=height, **common)
    if task == "portrait":
        return portrait(job.prompt, refs, width=width, height=height, **common)
    if task == "instruct":
        return instruct(job.prompt, _need(job.image, "image", task), **common)
    if task == "local_edit":
        mode = str(params.get("mode", "repaint"))
        return local_edit(
            job.prompt,
            _need(job.image, "image", task),
            job.mask,
            mode=mode,
            repainting_scale=scale,
            control=control,
            **common,
        )
    if task == "reference_edit":
        return reference_edit(
            job.prompt, _need(job.image, "image", task), job.mask, refs, face=bool(params.get("face", False)), **common
        )
    if task == "generate":
        return generate(job.prompt, width=width, height=height, **common)
    if task == "inpaint":
        return inpaint(job.prompt, _need(job.image, "image", task), job.mask, **common)
    if task == "fft_repaint":
        return fft_repaint(job.prompt, _need(job.image, "image", task), job.mask, repainting_scale=scale, **common)
    if task == "fft_super_resolution":
        return fft_super_resolution(
            job.prompt, _need(job.image, "image", task), job.mask, repainting_scale=scale, **common
        )
    if task == "fft_colorize":
        return fft_colorize(job.prompt, _need(job.image, "image", task), job.mask, repainting_scale=scale, **common)
    if task == "fft_control":
        annotator = str(params.get("annotator", "none"))
        return fft_control(
            job.prompt,
            _need(job.image, "image", task),
            job.mask,
            control=control,
            annotator=annotator,
            repainting_scale=scale,
            **common,
        )
    if task == "fft_reference":
        if job.image is not None:
            raise _bad("task 'fft_reference' makes a new image; send width and height instead of an image")
        return fft_reference(job.prompt, refs, width=width, height=height, **keep, **common)
    # fft_reference_edit
    return fft_reference_edit(
        job.prompt, _need(job.image, "image", task), job.mask, refs, repainting_scale=scale, **keep, **common
    )


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
        "mode": plan.mode,
        "references": [list(span) for span in plan.reference_spans],
        "keep_pixels_rate": plan.keep_pixels_rate,
        "control": plan.control,
        "strength": plan.strength,
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
