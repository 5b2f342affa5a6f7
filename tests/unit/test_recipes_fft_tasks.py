"""The FFT tasks, `repainting_scale`, `no_preprocess` (a control image) and several references, as the authors run them.

Numbers are pinned by hand (the comments show the arithmetic), and every canvas, mask and "change" image is also
compared with an independent implementation of the authors' `ACEPlusImageProcessor.preprocess` (ali-vilab/ACE_plus
f3e410b, inference/utils.py) written below with torch tensor ops (F.interpolate bilinear+antialias for T.Resize,
nearest-exact for the token fit, F.pad for T.Pad), extended to N references the way their training data joins
reference contexts (modules/ace_plus_dataset.py: `torch.cat(ref_image_list + edit_image_list, dim=-1)`).
The annotator composite is rebuilt with OpenCV and PIL as their `edit_preprocess` calls them.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from ace_protocol.errors import ErrorCode
from ace_protocol.tasks import CONTROL, TASKS
from PIL import Image

from bridge_server.engine import recipes
from bridge_server.engine.base import EngineError, EngineJob

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rgba(w: int, h: int, seed: int = 0) -> np.ndarray:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    img[..., 3] = 255
    return img


def box_mask(w: int, h: int, x0: int, y0: int, x1: int, y1: int, value: int = 255) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = value
    return mask


# ----------------------------------------------------------------------------------------------------------------
# The authors' preprocessing, independently (torch), for inputs within 4:1 (their mask is not cropped with the image)


def _tensor(rgb: np.ndarray):
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1) * 2 - 1  # ToTensor + Normalize(.5, .5)


def _resize(t, h: int, w: int, mode: str):
    kwargs = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t[None], size=(h, w), mode=mode, **kwargs)[0]


def authors_preprocess(
    references,
    edit_rgb,
    edit_mask,
    *,
    height=1024,
    width=1024,
    repainting_scale=1.0,
    keep_pixels=False,
    keep_pixels_rate=0.8,
    use_change=False,
    max_seq_len=4096,
    d=16,
):
    refs = [_tensor(r) for r in references]
    if edit_rgb is None:
        edit = torch.zeros([3, height, width])
        mask = torch.ones([1, height, width])
    else:
        edit = _tensor(edit_rgb)
        if edit_mask is None:
            m = np.ones(edit.shape[1:])
        else:
            m = np.where(np.asarray(edit_mask) > 128, 1, 0)
        m = m.astype(np.float32) if np.any(m) else np.ones_like(m).astype(np.float32)
        mask = torch.tensor(m).unsqueeze(0)
    edit = edit * (1 - mask * repainting_scale)
    e_h = edit.shape[1]
    placed = []
    for ref in refs:
        _, h, w = ref.shape
        if not keep_pixels:
            ref = _resize(ref, e_h, int(w * (e_h / h)), "bilinear")
        else:
            if h >= keep_pixels_rate * e_h:
                t_h = int(e_h * keep_pixels_rate)
                ref = _resize(ref, t_h, int(w * (t_h / h)), "bilinear")
            delta_h = e_h - ref.shape[1]
            ref = F.pad(ref, (0, 0, delta_h // 2, delta_h - delta_h // 2), value=0.0)
        placed.append(ref)
    if placed:
        edit = torch.cat([*placed, edit], dim=-1)
        mask = torch.cat([torch.zeros([1, e_h, sum(r.shape[-1] for r in placed)]), mask], dim=-1)
    h, w = edit.shape[-2:]
    scale = min(1.0, math.sqrt(max_seq_len / ((h / d) * (w / d))))
    r_h, r_w = int(h * scale) // d * d, int(w * scale) // d * d
    edit = _resize(edit, r_h, r_w, "nearest-exact")
    mask = _resize(mask, r_h, r_w, "nearest-exact")
    change = None
    if use_change:
        change = edit * mask
        edit = edit * (1 - mask)
    as_np = lambda t: t.permute(1, 2, 0).numpy()  # noqa: E731
    return as_np(edit), mask[0].numpy(), None if change is None else as_np(change)


def authors_edit_preprocess(structure_rgb: np.ndarray, image_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """inference/utils.py::edit_preprocess: `Image.composite(annotated, image, mask)` with the 'L' mask."""
    return np.asarray(
        Image.composite(Image.fromarray(structure_rgb), Image.fromarray(image_rgb), Image.fromarray(mask, "L"))
    )


def assert_same_inputs(plan, canvas, mask, change):
    assert (plan.width, plan.height) == (canvas.shape[1], canvas.shape[0])
    assert np.array_equal(plan.mask, mask)
    # Bilinear antialiased reference resizes: PIL (ours) and torch (theirs) agree to float rounding.
    assert np.abs(plan.canvas - canvas).max() < 2e-3
    if change is None:
        assert plan.change is None
    else:
        assert np.abs(plan.change - change).max() < 2e-3


# ----------------------------------------------------------------------------------------------------------------
# keep_pixels and several references, pinned by numbers


def test_fft_reference_keeps_pixels_and_pads_as_the_authors():
    # 1024^2 reference, 1024^2 target: 1024 >= 0.8 * 1024, so shrink to int(819.2) = 819 rows, 819 columns, then pad
    # 205 rows: 102 on top, 103 below. Canvas 1843x1024 -> x sqrt(4096 / (115.19 * 64)) = 0.7454 -> 1360x752 (floored
    # to 16). Boundary: the columns that sample below 819 of 1843 -> 604.
    plan = recipes.fft_reference("p", rgba(1024, 1024, 1), width=1024, height=1024)
    assert (plan.width, plan.height, plan.image_tokens) == (1360, 752, 3995)
    assert plan.reference_spans == ((0, 604),) and plan.edit_columns == (604, 1360)
    assert (plan.transformer, plan.adapter, plan.repainting_scale, plan.keep_pixels_rate) == ("fft", None, 1.0, 0.8)
    assert plan.mask[:, :604].max() == 0 and plan.mask[:, 604:].min() == 1
    # Padding rows are mid-grey (0): source rows 0..101 map to canvas rows < ceil(102 * 752 / 1024) = 75.
    assert np.all(plan.canvas[:74, :604] == 0) and np.all(plan.canvas[-75:, :604] == 0)
    assert np.abs(plan.canvas[100:600, :604]).max() > 0.5  # the reference itself, unchanged in the edit input
    assert np.all(plan.change == 0)  # scale 1 and a blank target: nothing in the change channels
    canvas, mask, change = authors_preprocess(
        [rgba(1024, 1024, 1)[..., :3]], None, None, keep_pixels=True, use_change=True
    )
    assert_same_inputs(plan, canvas, mask, change)


def test_a_short_reference_is_not_resized_only_padded():
    # 300 rows < 0.8 * 512: kept at 208x300, padded by 212 rows (106 + 106) to the 512-row edit; 720x512 fits.
    plan = recipes.fft_reference_edit(
        "p", rgba(512, 512), box_mask(512, 512, 100, 100, 400, 400), rgba(208, 300, 4), max_tokens=4096
    )
    assert (plan.width, plan.height) == (720, 512) and plan.reference_spans == ((0, 208),)
    assert np.all(plan.canvas[:106, :208] == 0) and np.all(plan.canvas[-106:, :208] == 0)
    assert np.array_equal(plan.canvas[106:406, :208], recipes.to_signed(rgba(208, 300, 4)[..., :3]))
    canvas, mask, change = authors_preprocess(
        [rgba(208, 300, 4)[..., :3]],
        rgba(512, 512)[..., :3],
        box_mask(512, 512, 100, 100, 400, 400),
        keep_pixels=True,
        use_change=True,
    )
    assert_same_inputs(plan, canvas, mask, change)


@pytest.mark.parametrize("keep", [True, False])
def test_two_references_side_by_side_in_order(keep):
    refs = [rgba(1024, 1024, 1), rgba(300, 600, 2)]
    plan = recipes.plan_for_job(
        EngineJob("fft_reference", "p", 1, {"width": 1024, "height": 768, "keep_pixels": keep}, references=refs)
    )
    if keep:
        # 1024 >= 614.4: -> 614x614; 600 < 614.4: kept 300x600. 914 + 1024 = 1938 x 768 -> 1616x640.
        assert plan.reference_spans == ((0, 512), (512, 762)) and plan.keep_pixels_rate == 0.8
    else:
        # aligned to 768 rows: 768 + int(300 * 768 / 600) = 384 columns.
        assert plan.keep_pixels_rate is None and len(plan.reference_spans) == 2
    assert plan.reference_columns == (0, plan.reference_spans[-1][1]) == (0, plan.edit_columns[0])
    canvas, mask, change = authors_preprocess(
        [r[..., :3] for r in refs], None, None, height=768, width=1024, keep_pixels=keep, use_change=True
    )
    assert_same_inputs(plan, canvas, mask, change)


def test_lora_reference_edit_takes_several_references_aligned_to_the_edit_height():
    refs = [rgba(1024, 1024, 1), rgba(512, 1024, 2)]
    plan = recipes.reference_edit("p", rgba(1024, 1024), None, refs)
    # 1024 + 512 + 1024 = 2560 x 1024 -> 1616x640; spans 1024 -> 646, 1536 -> 970.
    assert (plan.width, plan.height) == (1616, 640)
    assert plan.reference_spans == ((0, 646), (646, 970)) and plan.crop == (970, 0, 646, 640)
    assert plan.adapter == "subject" and plan.keep_pixels_rate is None
    canvas, mask, _ = authors_preprocess([r[..., :3] for r in refs], rgba(1024, 1024)[..., :3], None)
    assert_same_inputs(plan, canvas, mask, None)
    out = plan.postprocess(np.zeros((640, 1616, 3), np.uint8))
    assert out.shape == (1024, 1024, 3)


def test_too_many_references_are_refused():
    with pytest.raises(EngineError) as err:
        recipes.subject("p", [rgba(32, 32, i) for i in range(5)], width=64, height=64)
    assert err.value.code == ErrorCode.BAD_REQUEST and "at most 4" in err.value.message


# ----------------------------------------------------------------------------------------------------------------
# The FFT edit types


def test_fft_repaint_greys_the_mask_and_leaves_change_empty():
    img, mask = rgba(96, 64), box_mask(96, 64, 20, 10, 70, 50)
    plan = recipes.plan_for_job(EngineJob("fft_repaint", "a blue hand", 1, {}, image=img, mask=mask))
    assert (plan.transformer, plan.repainting_scale, plan.mode) == ("fft", 1.0, "repaint")
    assert np.all(plan.canvas[10:50, 20:70] == 0) and np.all(plan.change == 0)
    assert np.array_equal(plan.canvas[:10], recipes.to_signed(img[:10, :, :3]))
    assert_same_inputs(plan, *authors_preprocess([], img[..., :3], mask, repainting_scale=1.0, use_change=True))


def test_fft_super_resolution_moves_the_masked_content_into_change():
    img, mask = rgba(96, 64), box_mask(96, 64, 20, 10, 70, 50)
    plan = recipes.plan_for_job(EngineJob("fft_super_resolution", "{image} a tiger", 1, {}, image=img, mask=mask))
    assert (plan.repainting_scale, plan.mode, plan.control) == (0.0, "no_preprocess", False)
    signed = recipes.to_signed(img[..., :3])
    assert np.array_equal(plan.change[10:50, 20:70], signed[10:50, 20:70])
    assert np.all(plan.canvas[10:50, 20:70] == 0) and np.all(plan.change[:10] == 0)
    assert_same_inputs(plan, *authors_preprocess([], img[..., :3], mask, repainting_scale=0.0, use_change=True))


def test_fft_colorize_puts_their_grey_inside_the_soft_mask():
    img = rgba(96, 64)
    mask = box_mask(96, 64, 20, 10, 70, 50, 255)
    mask[10:50, 20:30] = 200  # soft edge: the composite is soft, the model mask binary (> 128)
    plan = recipes.plan_for_job(EngineJob("fft_colorize", "{image} a portrait", 1, {}, image=img, mask=mask))
    assert (plan.repainting_scale, plan.mode) == (0.0, "recolor")
    grey = np.repeat(cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)[..., None], 3, axis=2)
    composited = authors_edit_preprocess(grey, img[..., :3], mask)
    assert_same_inputs(plan, *authors_preprocess([], composited, mask, repainting_scale=0.0, use_change=True))


def test_fft_control_uses_the_control_image_inside_the_mask():
    img, control = rgba(96, 64), rgba(96, 64, 9)
    mask = box_mask(96, 64, 20, 10, 70, 50, 180)
    job = EngineJob("fft_control", "{image} a robot", 1, {}, image=img, mask=mask, references=[control])
    plan = recipes.plan_for_job(job)
    assert (plan.repainting_scale, plan.mode, plan.control) == (0.0, "no_preprocess", True)
    composited = authors_edit_preprocess(control[..., :3], img[..., :3], mask)
    assert_same_inputs(plan, *authors_preprocess([], composited, mask, repainting_scale=0.0, use_change=True))
    # Without a control image, the image itself is the guide (their no_preprocess on the edit image).
    plain = recipes.plan_for_job(EngineJob("fft_control", "p", 1, {}, image=img, mask=mask))
    assert plain.control is False
    assert_same_inputs(plain, *authors_preprocess([], img[..., :3], mask, repainting_scale=0.0, use_change=True))


def test_fft_control_mosaic_annotator():
    img, mask = rgba(200, 130), box_mask(200, 130, 0, 0, 200, 130)
    plan = recipes.plan_for_job(EngineJob("fft_control", "p", 1, {"annotator": "mosaic"}, image=img, mask=mask))
    small = cv2.resize(img[..., :3], (200 // 64, 130 // 64), interpolation=cv2.INTER_CUBIC)
    mosaic = cv2.resize(small, (200, 130), interpolation=cv2.INTER_NEAREST)
    assert plan.mode == "mosaic"
    assert_same_inputs(plan, *authors_preprocess([], mosaic, mask, repainting_scale=0.0, use_change=True))
    with pytest.raises(EngineError):
        recipes.plan_for_job(
            EngineJob(
                "fft_control", "p", 1, {"annotator": "mosaic"}, image=img, mask=mask, references=[rgba(200, 130, 1)]
            )
        )


def test_a_control_image_of_another_size_is_resized_to_the_region():
    img, control = rgba(96, 64), rgba(48, 32, 9)
    plan = recipes.fft_control("p", img, None, control=control)
    big = np.asarray(Image.fromarray(control[..., :3]).resize((96, 64), Image.Resampling.BILINEAR))
    assert np.array_equal(plan.change, recipes.to_signed(big))  # no mask: all of it, all in "change"


# ----------------------------------------------------------------------------------------------------------------
# local_edit: repainting_scale and no_preprocess


@pytest.mark.parametrize(
    ("mode", "given", "scale"),
    [
        ("repaint", None, 1.0),
        ("canny", None, 0.5),
        ("no_preprocess", None, 0.5),
        ("repaint", 0.25, 0.25),
        ("recolor", 0.0, 0.0),
        ("mosaic", 1.0, 1.0),
    ],
)
def test_local_edit_repainting_scale(mode, given, scale):
    img, mask = rgba(96, 64), box_mask(96, 64, 20, 10, 70, 50)
    params = {"mode": mode} | ({} if given is None else {"repainting_scale": given})
    plan = recipes.plan_for_job(EngineJob("local_edit", "p", 1, params, image=img, mask=mask))
    assert plan.repainting_scale == scale and plan.adapter == "local" and plan.change is None
    structure = img[..., :3] if mode in ("repaint", "no_preprocess") else recipes.ANNOTATORS[mode](img[..., :3])
    composited = authors_edit_preprocess(structure, img[..., :3], mask)
    assert_same_inputs(plan, *authors_preprocess([], composited, mask, repainting_scale=scale))


def test_local_edit_scale_pins_the_pixels():
    img, mask = rgba(64, 64), box_mask(64, 64, 16, 16, 48, 48)
    plan = recipes.local_edit("p", img, mask, mode="repaint", repainting_scale=0.3)
    signed = recipes.to_signed(img[..., :3])
    assert np.allclose(plan.canvas[16:48, 16:48], signed[16:48, 16:48] * 0.7)
    assert np.array_equal(plan.canvas[:16], signed[:16])


def test_local_edit_no_preprocess_with_a_control_image():
    img, control = rgba(96, 64), rgba(96, 64, 5)
    mask = box_mask(96, 64, 20, 10, 70, 50, 255)
    mask[10:50, 20:25] = 150
    job = EngineJob("local_edit", "p", 1, {"mode": "no_preprocess"}, image=img, mask=mask, references=[control])
    plan = recipes.plan_for_job(job)
    assert plan.control is True and plan.reference_columns is None and plan.width == 96
    composited = authors_edit_preprocess(control[..., :3], img[..., :3], mask)
    assert_same_inputs(plan, *authors_preprocess([], composited, mask, repainting_scale=0.5))


@pytest.mark.parametrize(
    ("task", "params", "refs", "words"),
    [
        ("local_edit", {"mode": "canny"}, 1, "no_preprocess"),
        ("local_edit", {"mode": "no_preprocess"}, 2, "one control image"),
        ("local_edit", {"repainting_scale": 1.5}, 0, "between 0 and 1"),
        ("fft_repaint", {}, 1, "no reference"),
        ("fft_reference", {"keep_pixels_rate": 0.0}, 1, "keep_pixels_rate"),
        ("fft_control", {"annotator": "hed"}, 0, "annotator"),  # not an ACE++ edit type
    ],
)
def test_bad_combinations_are_bad_request(task, params, refs, words):
    has_image = task != "fft_reference"
    job = EngineJob(
        task,
        "p",
        1,
        {"width": 64, "height": 64, **params},
        image=rgba(64, 64) if has_image else None,
        references=[rgba(64, 64, i) for i in range(refs)],
    )
    with pytest.raises(EngineError) as err:
        recipes.plan_for_job(job)
    assert err.value.code == ErrorCode.BAD_REQUEST and words in err.value.message


def test_fft_reference_refuses_an_image():
    job = EngineJob("fft_reference", "p", 1, {}, image=rgba(64, 64), references=[rgba(64, 64, 1)])
    with pytest.raises(EngineError, match="width and height"):
        recipes.plan_for_job(job)


# ----------------------------------------------------------------------------------------------------------------
# The task table and the dry run


NEW_TASKS = [
    "fft_repaint",
    "fft_super_resolution",
    "fft_colorize",
    "fft_control",
    "fft_reference",
    "fft_reference_edit",
]


def test_every_table_task_has_a_recipe_and_the_fft_tasks_need_the_fft_model():
    assert set(TASKS) == set(recipes.RECIPES)
    for name in NEW_TASKS:
        assert TASKS[name].model == "fft" and TASKS[name].param("guidance").default == 50.0
    assert {t.name for t in TASKS.values() if t.reference_kind == CONTROL} == set(recipes.CONTROL_TASKS)
    assert TASKS["local_edit"].max_references == 1 and TASKS["local_edit"].param("repainting_scale").default is None
    for name in recipes.REFERENCE_TASKS:
        assert TASKS[name].max_references == recipes.MAX_REFERENCES
    wire = TASKS["fft_control"].to_wire()
    assert wire["reference_kind"] == "control" and type(TASKS["fft_control"]).from_wire(wire).reference_kind == CONTROL


@pytest.mark.parametrize("task", NEW_TASKS)
def test_dry_run_of_each_new_task(task, tmp_path):
    spec = TASKS[task]
    params = spec.validate_params({"width": 96, "height": 64} if spec.param("width") else {})
    job = EngineJob(
        task,
        "{image} p",
        1,
        params,
        image=rgba(80, 48) if spec.needs_image else None,
        mask=box_mask(80, 48, 10, 8, 60, 40) if spec.needs_image else None,
        references=[rgba(40, 48, 2)] * spec.min_references,
        width=96,
        height=64,
    )
    plan = recipes.plan_for_job(job)
    paths = recipes.write_dry_run(tmp_path, plan)
    data = json.loads((tmp_path / "plan.json").read_text())
    assert tmp_path / "change.png" in paths and data["transformer"] == "fft" and data["task"] == task
    assert data["references"] == [list(s) for s in plan.reference_spans]
    assert data["keep_pixels_rate"] == (0.8 if spec.min_references else None)
    out = plan.postprocess(np.zeros((plan.height, plan.width, 3), np.uint8))
    assert out.shape == ((48, 80, 3) if spec.needs_image else (64, 96, 3))


def test_nearest_exact_picks_the_rows_torch_picks_on_the_cpu():
    """The token-fit resize drops the same rows and columns as the authors' T.Resize(NEAREST_EXACT) (float32)."""
    rng = np.random.default_rng(0)
    sizes = [(768, 608), (2178, 1712), (1023, 1008)] + [
        (int(n_in), int(n_out)) for n_out in rng.integers(16, 1500, 200) for n_in in [n_out + rng.integers(0, 3000)]
    ]
    for n_in, n_out in sizes:
        line = torch.arange(n_in, dtype=torch.float32)[None, None]
        theirs = F.interpolate(line, size=n_out, mode="nearest-exact")[0, 0].long().numpy()
        assert np.array_equal(recipes.nearest_exact_index(n_in, n_out), theirs), (n_in, n_out)
