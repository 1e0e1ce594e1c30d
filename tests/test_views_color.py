"""color-jitter (transferset/views/color.py): the grammar and its ranges, params as a pure function of
(seed, row, view), each factor against a NumPy form of torchvision's definitions, bit-exact replay, and
end to end through the CLI on RGB images with a normalised input spec."""

import numpy as np
import pytest
import torch
from conftest import run_in_process

from transferset.errors import UserError
from transferset.inputs import InputSpec
from transferset.views.augment import parse_augment
from transferset.views.expand import ViewPlan

Image = pytest.importorskip("PIL.Image")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_the_grammar_reads_back_its_canonical_text():
    aug = parse_augment("color-jitter( saturation=0.2, brightness=0.4 ), hflip")
    assert aug.text == "color-jitter(brightness=0.4,saturation=0.2),hflip(p=0.5)"  # the fixed order, not the written one
    assert parse_augment(aug.text) == aug and aug.count == 2 + 1
    assert parse_augment("color-jitter(brightness=0,contrast=1.5)").text == "color-jitter(contrast=1.5)"


@pytest.mark.parametrize("spec, fragment", [
    ("color-jitter(brightness=11)", "color-jitter: brightness=11 is out of range; give 0 <= brightness <= 10"),
    ("color-jitter(contrast=-0.1)", "color-jitter: contrast=-0.1 is out of range; give 0 <= contrast <= 10"),
    ("color-jitter(saturation=lots)", "saturation=lots is out of range; give 0 <= saturation <= 10"),
    ("color-jitter(hue=0.1)", "wrong arguments; write color-jitter(brightness=B,contrast=C,saturation=S)"),
    ("color-jitter(0.4)", "wrong arguments; write color-jitter(brightness=B,contrast=C,saturation=S)"),
    ("color-jitter", "color-jitter needs brightness, contrast or saturation above 0"),
    ("color-jitter(brightness=0)", "color-jitter needs brightness, contrast or saturation above 0"),
])
def test_out_of_range_factors_are_one_line_naming_the_range(spec, fragment):
    with pytest.raises(UserError) as caught:
        parse_augment(spec)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_saturation_needs_rgb_and_contrast_one_or_three_channels():
    with pytest.raises(UserError, match=r"^--augment color-jitter\(saturation=0.4\): saturation needs 3 \(RGB\) channels, the input has 1"):
        parse_augment("color-jitter(saturation=0.4)").output_shape((1, 8, 8))
    with pytest.raises(UserError, match="contrast needs 1 or 3 channels, the input has 2"):
        parse_augment("color-jitter(contrast=0.4)").output_shape((2, 8, 8))
    assert parse_augment("color-jitter(brightness=0.4,contrast=0.4)").output_shape((1, 8, 8)) == (1, 8, 8)
    assert parse_augment("color-jitter(brightness=0.4)").output_shape((5, 8, 8)) == (5, 8, 8)


def test_factors_are_thousandths_drawn_from_seed_row_and_view():
    plan = ViewPlan(5, parse_augment("hflip,color-jitter(brightness=0.4,contrast=1.5,saturation=0.05)"), seed=3)
    ids = [f"r{i}" for i in range(300)]
    every = plan.params(ids, (3, 8, 8))  # [300, 5, 1 + 3]
    assert np.array_equal(plan.params(ids[7:9], (3, 8, 8)), every[7:9])  # another batch: the same params
    assert not np.array_equal(ViewPlan(5, plan.augmentation, seed=4).params(ids, (3, 8, 8)), every)
    for column, (lo, hi) in zip((1, 2, 3), ((600, 1400), (0, 2500), (950, 1050))):  # [max(0, 1 - X), 1 + X] x 1000
        values = every[..., column]
        assert values.min() >= lo and values.max() <= hi
        assert values.min() < lo + (hi - lo) * 0.05 and values.max() > hi - (hi - lo) * 0.05  # spread over the range
    assert len(np.unique(every[..., 1])) > 400  # thousandths, not a few levels


def _grey(p):
    return 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2] if len(p) == 3 else p[0]


def _jitter_reference(pixels: np.ndarray, factors: dict) -> np.ndarray:
    """NumPy, float64: torchvision's adjust_brightness, adjust_contrast, adjust_saturation on a
    [C, H, W] image in [0, 1], in this order, each clamped to [0, 1]."""
    p = pixels.astype(np.float64)
    if "brightness" in factors:
        p = np.clip(p * factors["brightness"], 0, 1)
    if "contrast" in factors:
        f = factors["contrast"]
        p = np.clip(f * p + (1 - f) * _grey(p).mean(), 0, 1)
    if "saturation" in factors:
        f = factors["saturation"]
        p = np.clip(f * p + (1 - f) * _grey(p)[None], 0, 1)
    return p


@pytest.mark.parametrize("spec, channels", [
    ("color-jitter(brightness=0.9)", 3), ("color-jitter(contrast=0.9)", 3), ("color-jitter(contrast=0.9)", 1),
    ("color-jitter(saturation=0.9)", 3), ("color-jitter(brightness=0.5,contrast=0.5,saturation=0.5)", 3),
])
def test_each_factor_matches_numpy(spec, channels):
    rng = np.random.default_rng(channels)
    pixels = rng.random((6, channels, 9, 7)).astype(np.float32)
    aug = parse_augment(spec)
    names = aug.ops[0].factors
    thousandths = np.array([[0] * len(names), [1000] * len(names), [1900] * len(names),
                            *rng.integers(100, 1900, (3, len(names)))])  # 0 and 1.9 clamp, 1 is the identity
    got = aug.apply(torch.from_numpy(pixels), torch.from_numpy(thousandths)).numpy()
    for image, factors, out in zip(pixels, thousandths, got):
        want = _jitter_reference(image, dict(zip(names, factors / 1000)))
        np.testing.assert_allclose(out, want, atol=2e-6, rtol=0)
    assert np.array_equal(got[1], pixels[1])  # every factor 1: unchanged


def test_on_normalised_inputs_it_jitters_the_pixels():
    """With an input spec's mean and std, the op undoes them, jitters the pixels, and redoes them."""
    rng = np.random.default_rng(1)
    pixels = rng.random((4, 3, 6, 6)).astype(np.float32)
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    x = torch.from_numpy(((pixels - mean) / std).astype(np.float32))  # as InputSpec normalises
    spec = InputSpec(columns=("image",), shape=(3, 6, 6), scale=1 / 255, mean=MEAN, std=STD, image=True)
    aug = parse_augment("color-jitter(brightness=0.4,contrast=0.4,saturation=0.4)").for_input(spec)
    params = rng.integers(600, 1400, (4, 3))
    got = aug.apply(x, torch.from_numpy(params)).numpy()
    for image, factors, out in zip(pixels, params, got):
        want = (_jitter_reference(image, dict(zip(("brightness", "contrast", "saturation"), factors / 1000))) - mean) / std
        np.testing.assert_allclose(out, want, atol=2e-5, rtol=0)


def test_replay_is_bit_exact_whatever_the_batch_and_threads():
    plan = ViewPlan(4, parse_augment("random-resized-crop(16,scale=0.3-1),hflip,color-jitter(brightness=0.4,contrast=0.8,saturation=0.4)"), seed=2)
    images = torch.rand(6, 3, 16, 16)
    views, params = plan.expand({"x": images}, [str(i) for i in range(6)])
    flat = torch.from_numpy(params.reshape(24, -1))
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for i in (0, 9, 23):
                assert torch.equal(plan.augmentation.apply(images[i // 4 : i // 4 + 1], flat[i : i + 1]), views["x"][i : i + 1])
            assert torch.equal(plan.augmentation.apply(images.repeat_interleave(4, 0)[3:18], flat[3:18]), views["x"][3:18])
        # Contrast's mean over 262k pixels: a float32 sum differs with the threads and the batch
        # (it did here for most of these images); summed in integers it is one answer.
        big = torch.rand(8, 1, 512, 512, generator=torch.Generator().manual_seed(0))
        contrast = parse_augment("color-jitter(contrast=0.5)")
        torch.set_num_threads(2)
        one = torch.cat([contrast.apply(big[i : i + 1], torch.tensor([[1300]])) for i in range(8)])
        torch.set_num_threads(1)
        assert torch.equal(contrast.apply(big, torch.tensor([[1300]] * 8)), one)
    finally:
        torch.set_num_threads(threads)


# -- end to end: RGB images, a normalised input spec ---------------------------------------------------

AUGMENT = "random-resized-crop(8,scale=0.5-1),color-jitter(brightness=0.4,contrast=0.4,saturation=0.4)"
SPEC_FLAGS = ("--input-shape", "3,8,8", "--input-scale", "1/255", "--input-mean", ",".join(map(str, MEAN)),
              "--input-std", ",".join(map(str, STD)))


@pytest.fixture(scope="module")
def rgb_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("color")
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / "photos" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(root / "photos" / f"c{c}" / f"{i}.png")
    assert run_in_process("convert", "--image-folder", root / "photos", "--out", root / "photos.parquet", "-q").returncode == 0
    run_in_process("generate", "--teacher", "teacher_models:tiny_rgb", "--source", root / "photos.parquet", *SPEC_FLAGS,
                   "--views", "3", "--augment", AUGMENT, "--storage-dtype", "float32", "--batch-size", "5",
                   "--out", root / "set", "-q", check=True)
    return root


def test_the_teacher_saw_the_replayed_jittered_views(rgb_set):
    import pyarrow.parquet as pq
    from teacher_models import tiny_rgb

    from train.stream import StreamSource
    from train.views import choose_views
    from transferset.format.manifest import read_manifest

    out = rgb_set / "set"
    prov = read_manifest(out).provenance
    table = pq.read_table(out / "part-00000.parquet")
    spec = InputSpec.from_dict(prov.input)
    decoded = spec.to_tensor(table)
    params = torch.tensor(table.column("view_params").to_pylist())  # [12, 3, 4 + 3]
    aug = ViewPlan.from_options(prov.target_options, spec).augmentation
    views = aug.apply(decoded.repeat_interleave(3, 0), params.reshape(-1, params.shape[-1]))
    with torch.no_grad():
        teacher = torch.log_softmax(tiny_rgb()(views), dim=-1).reshape(len(table), 3, 10)
    logits = torch.tensor(table.column("logits").to_pylist())
    torch.testing.assert_close(torch.log_softmax(logits, dim=-1), teacher, atol=1e-5, rtol=0)
    unbound = ViewPlan.from_options(prov.target_options).augmentation  # jitter on the normalised values instead: other views
    assert not torch.allclose(unbound.apply(decoded.repeat_interleave(3, 0), params.reshape(-1, params.shape[-1])), views, atol=1e-3)
    # The trainer replays the same tensors: one view per row and epoch, bit for bit.
    ids = table.column("id").to_pylist()
    for batch in StreamSource.open_transfer_set(out).epoch(batch_size=5, seed=1, epoch=2, columns_extra=("id",)):
        rows = np.array([ids.index(i) for i in batch.extra["id"]])
        chosen = torch.from_numpy(choose_views(1, 2, rows, 3))
        assert torch.equal(batch.inputs, views.reshape(len(table), 3, 3, 8, 8)[rows, chosen])
        assert torch.equal(batch.target_logits, logits[rows, chosen])


@pytest.mark.parametrize("flags, fragment", [
    (["--input-shape", "1,8,8", "--input-scale", "1/255", "--augment", "color-jitter(saturation=0.4)"],
     "saturation needs 3 (RGB) channels, the input has 1"),
    (["--input-shape", "3,8,8", "--augment", "color-jitter(brightness=0.4)"],
     "works on pixels in [0, 1]: give --input-scale 1/255 for these 8-bit images"),
    (["--input-shape", "3,8,8", "--input-scale", "1/255", "--augment", "color-jitter(brightness=12)"],
     "color-jitter: brightness=12 is out of range; give 0 <= brightness <= 10"),
])
def test_bad_color_jitter_is_one_line_and_writes_nothing(rgb_set, tmp_path, flags, fragment):
    out = tmp_path / "set"
    proc = run_in_process("generate", "--teacher", "teacher_models:tiny_rgb", "--source", rgb_set / "photos.parquet",
                          "--views", "2", *flags, "--out", out, "-q")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
    assert not out.exists()
