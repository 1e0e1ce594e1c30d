"""Augmentation as data (transferset/views/): the grammar, params as a pure function of
(seed, row, view), apply against NumPy references, bit-exact replay; the trainer's view choice."""

import numpy as np
import pytest
import torch

from train.views import choose_views
from transferset.errors import UserError
from transferset.views.augment import parse_augment
from transferset.views.draws import row_keys
from transferset.views.expand import ViewPlan, views_options


def test_the_grammar_reads_back_its_canonical_text():
    aug = parse_augment("random-resized-crop(24, scale=0.35-1), hflip, jitter(2), rotate(10)")
    assert aug.text == "random-resized-crop(24,scale=0.35-1,ratio=0.75-1.3333333333333333),hflip(p=0.5),shift(2),rotate(10)"
    assert parse_augment(aug.text) == aug and aug.count == 4 + 1 + 2 + 1
    assert aug.output_shape((3, 40, 30)) == (3, 24, 24)


@pytest.mark.parametrize("spec, fragment", [
    ("cutout(4)", "unknown augmentation 'cutout'; known: random-resized-crop"),
    ("shift(65)", "shift: N 65 is out of range; give 0..64"),
    ("random-resized-crop(24,scale=0-1)", "scale=0-1 is out of range; give 0 < LO <= HI <= 1"),
    ("random-resized-crop(24,scale=0.9-0.5)", "scale=0.9-0.5 is out of range"),
    ("random-resized-crop(0)", "SIZE 0 is out of range; give 1..4096"),
    ("hflip(p=1.5)", "p=1.5 is out of range; give 0 <= p <= 1"),
    ("shift(2", "unbalanced parentheses"),
    ("jitter", "jitter: wrong arguments; write jitter(N)"),
    ("hflip(0.3)", "hflip(0.3): wrong arguments; write hflip or hflip(p=P)"),
    ("rotate(200)", "rotate: DEG 200 is out of range; give 0..180"),
    ("", "--augment is empty"),
])
def test_bad_specs_are_one_line_naming_the_op_and_the_range(spec, fragment):
    with pytest.raises(UserError, match=None) as caught:
        parse_augment(spec)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_views_flags_are_checked():
    with pytest.raises(UserError, match="--views 0 must be at least 1"):
        views_options(0, "hflip", 0, "dense", {})
    with pytest.raises(UserError, match="--augment needs --views"):
        views_options(None, "hflip", 0, "dense", {})
    with pytest.raises(UserError, match="not --targets sampled"):
        views_options(2, "hflip", 0, "sampled", {"n": 4, "seed": 0})
    assert views_options(2, "hflip", 3, "topk", {"k": 5}) == ("views", {"views": 2, "augment": "hflip(p=0.5)", "seed": 3, "k": 5})
    with pytest.raises(UserError, match="makes views of 3,8,8 but the input shape is 3,16,16"):
        ViewPlan(2, parse_augment("random-resized-crop(8)"), 0).check_shape((3, 16, 16))


def test_params_are_a_pure_function_of_seed_row_and_view():
    plan = ViewPlan(6, parse_augment("random-resized-crop(16,scale=0.2-1),hflip,shift(3)"), seed=7)
    ids = [f"src:{i}" for i in range(40)]
    every = plan.params(ids, (3, 20, 18))
    again = plan.params(ids[25:] + ids[:3], (3, 20, 18))  # another batch composition, another order
    assert np.array_equal(again, np.concatenate([every[25:], every[:3]]))
    assert not np.array_equal(every, ViewPlan(6, plan.augmentation, seed=8).params(ids, (3, 20, 18)))
    top, left, h, w = (every[..., i] for i in range(4))
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= 20).all() and (left + w <= 18).all() and (top >= 0).all()
    area = h * w / (20 * 18)
    assert area.min() > 0.15 and area.max() <= 1.0
    assert set(np.unique(every[..., 4])) == {0, 1} and every[..., 5:].min() == -3 and every[..., 5:].max() == 3


def _bilinear_reference(image: np.ndarray, box, size: int) -> np.ndarray:
    """NumPy: the box (top, left, h, w) of image [C, H, W] resized to size x size, bilinear,
    pixel centres (align_corners=False), edges clamped."""
    top, left, h, w = box
    c, height, width = image.shape
    centres = (np.arange(size) + 0.5) / size
    u = np.clip(left + centres * w - 0.5, 0, width - 1)  # input x of each output column
    v = np.clip(top + centres * h - 0.5, 0, height - 1)
    x0, y0 = np.floor(u).astype(int), np.floor(v).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    wx, wy = u - x0, v - y0
    rows = image[:, y0][:, :, x0] * (1 - wx) + image[:, y0][:, :, x1] * wx
    rows1 = image[:, y1][:, :, x0] * (1 - wx) + image[:, y1][:, :, x1] * wx
    return rows * (1 - wy)[:, None] + rows1 * wy[:, None]


def _rotation_reference(image: np.ndarray, degrees: float) -> np.ndarray:
    """NumPy: output pixel (i, j) = bilinear sample of the input at the point rotated by `degrees`
    about the centre, 0 outside the image (a pixel beyond the edge weighs 0)."""
    c, height, width = image.shape
    a = np.deg2rad(degrees)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    out = np.zeros_like(image)
    for i in range(height):
        for j in range(width):
            u = np.cos(a) * (j - cx) - np.sin(a) * (i - cy) + cx
            v = np.sin(a) * (j - cx) + np.cos(a) * (i - cy) + cy
            x0, y0 = int(np.floor(u)), int(np.floor(v))
            for yy, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
                for xx, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
                    if 0 <= yy < height and 0 <= xx < width:
                        out[:, i, j] += wy * wx * image[:, yy, xx]
    return out


def test_ops_match_numpy_references():
    rng = np.random.default_rng(0)
    images = rng.random((5, 2, 12, 10)).astype(np.float32)
    x = torch.from_numpy(images)
    crop = parse_augment("random-resized-crop(7)")
    boxes = np.array([[0, 0, 12, 10], [2, 3, 5, 4], [1, 0, 11, 10], [6, 5, 6, 5], [3, 2, 1, 1]])
    out = crop.apply(x, torch.from_numpy(boxes)).numpy()
    for image, box, got in zip(images, boxes, out):
        np.testing.assert_allclose(got, _bilinear_reference(image.astype(np.float64), box, 7), atol=2e-6)
    shift = parse_augment("shift(3)")
    moves = np.array([[0, 0], [1, -2], [-3, 3], [2, 0], [0, -1]])
    out = shift.apply(x, torch.from_numpy(moves)).numpy()
    for image, (dy, dx), got in zip(images, moves, out):
        want = np.zeros_like(image)
        src = image[:, max(0, -dy): 12 - max(0, dy), max(0, -dx): 10 - max(0, dx)]
        want[:, max(0, dy): max(0, dy) + src.shape[1], max(0, dx): max(0, dx) + src.shape[2]] = src
        assert np.array_equal(got, want)
    turns = np.array([[0], [900], [-450], [123], [-1800]])  # tenths of a degree
    out = parse_augment("rotate(180)").apply(x, torch.from_numpy(turns)).numpy()
    for image, (tenths,), got in zip(images, turns, out):
        np.testing.assert_allclose(got, _rotation_reference(image.astype(np.float64), tenths / 10), atol=2e-5)
    flip = parse_augment("hflip").apply(x, torch.tensor([[1], [0], [1], [0], [0]])).numpy()
    assert np.array_equal(flip[0], images[0][:, :, ::-1]) and np.array_equal(flip[1], images[1])


def test_replay_is_bit_exact_whatever_the_batch():
    plan = ViewPlan(4, parse_augment("random-resized-crop(16,scale=0.3-1),hflip,shift(2),rotate(15)"), seed=1)
    images = torch.rand(6, 3, 16, 16)
    ids = [str(i) for i in range(6)]
    views, params = plan.expand({"x": images}, ids)
    flat = torch.from_numpy(params.reshape(24, -1))
    for i in (0, 7, 23):  # one view alone, from the stored params: the same bits the batch gave
        assert torch.equal(plan.augmentation.apply(images[i // 4 : i // 4 + 1], flat[i : i + 1]), views["x"][i : i + 1])
    assert torch.equal(plan.augmentation.apply(images.repeat_interleave(4, 0)[5:17], flat[5:17]), views["x"][5:17])


def test_each_row_takes_every_view_once_per_cycle_and_the_choice_is_pure():
    rows = np.arange(200)
    for views in (1, 3, 8):
        chosen = np.stack([choose_views(5, epoch, rows, views) for epoch in range(views)])  # [epochs, rows]
        assert (np.sort(chosen, axis=0) == np.arange(views)[:, None]).all()  # a permutation of the views per row
        assert np.array_equal(choose_views(5, 2, rows[50:], views), chosen[2 % views, 50:] if views > 2 else choose_views(5, 2, rows, views)[50:])
    cycle0 = np.stack([choose_views(5, e, rows, 8) for e in range(8)])
    cycle1 = np.stack([choose_views(5, e, rows, 8) for e in range(8, 16)])
    assert not np.array_equal(cycle0, cycle1) and not np.array_equal(cycle0, np.stack([choose_views(6, e, rows, 8) for e in range(8)]))
    counts = np.bincount(choose_views(0, 0, np.arange(8000), 8), minlength=8)
    assert counts.min() > 850  # about uniform over the views (1000 each)


def test_row_keys_are_stable():
    assert row_keys(["a", "b"]).tolist() == row_keys(["a", "b"]).tolist() and len(set(row_keys(["a", "b", "c"]).tolist())) == 3
