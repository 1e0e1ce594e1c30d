"""Student factories, --student-arg parsing, output-size checks, input jitter."""

from __future__ import annotations

import textwrap

import pytest
import torch

from train.students import build_student, cnn, jitter_images, mlp, parse_student_args
from transferset.errors import UserError


def test_mlp_shapes_and_layers():
    model = mlp(num_classes=10, input_shape=(1, 28, 28), hidden=(32, 16), dropout=0.5, input_dropout=0.2)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model) == 3
    single = mlp(num_classes=3, input_shape=(5,), hidden=7)  # an int is one hidden layer
    assert single(torch.zeros(2, 5)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(1, 28, 28), (28, 28), (3, 9, 7)])
def test_cnn_shapes(shape):
    model = cnn(num_classes=4, input_shape=shape, channels=(4, 8), hidden=16)
    assert model(torch.zeros(5, *shape)).shape == (5, 4)


def test_cnn_refuses_inputs_it_would_pool_away_and_flat_inputs():
    with pytest.raises(UserError, match="channels"):
        cnn(num_classes=4, input_shape=(1, 3, 3), channels=(4, 8))
    with pytest.raises(UserError, match="image inputs"):
        cnn(num_classes=4, input_shape=(784,))


def test_parse_student_args_types():
    got = parse_student_args(["hidden=800,800", "dropout=0.5", "batch_norm=true", "name=wide", "depth=3", "extra=none", "mix=1,2.5"])
    assert got == {"hidden": (800, 800), "dropout": 0.5, "batch_norm": True, "name": "wide", "depth": 3, "extra": None, "mix": (1, 2.5)}
    assert isinstance(got["depth"], int) and isinstance(got["hidden"], tuple)
    assert parse_student_args(None) == {}


@pytest.mark.parametrize(
    "items, message",
    [(["hidden"], "key=value"), (["=3"], "key=value"), (["num_classes=3"], "set by the trainer"), (["a=1", "a=2"], "twice")],
)
def test_parse_student_args_errors(items, message):
    with pytest.raises(UserError, match=message):
        parse_student_args(items)


def test_build_student_with_builtin_factory_and_args():
    model = build_student("train.students:mlp", {"hidden": (8,)}, 3, (2, 5))
    assert model(torch.zeros(4, 2, 5)).shape == (4, 3)
    assert model.training  # the output check puts the mode back


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "my_students.py").write_text(
        textwrap.dedent(
            """
            import torch

            def wrong_size(num_classes, input_shape, out=7):
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(out))

            def not_a_module(num_classes, input_shape):
                return 42

            def no_shape(num_classes):
                return torch.nn.Linear(3, num_classes)

            def anything(**kwargs):
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, kwargs["num_classes"]))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_build_student_output_size_mismatch_names_both(factories):
    with pytest.raises(UserError, match=r"outputs 7 logits per row but the data has 10 classes"):
        build_student("my_students:wrong_size", {}, 10, (6,))
    assert build_student("my_students:wrong_size", {"out": 10}, 10, (6,)) is not None


def test_build_student_other_factory_errors(factories):
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        build_student("my_students:not_a_module", {}, 3, (6,))
    with pytest.raises(UserError, match="input_shape"):
        build_student("my_students:no_shape", {}, 3, (6,))
    with pytest.raises(UserError, match=r"--student-arg width: my_students:wrong_size does not take it \(it takes: out\)"):
        build_student("my_students:wrong_size", {"width": 3}, 3, (6,))
    with pytest.raises(UserError, match="fails on inputs of shape"):
        build_student("my_students:anything", {}, 3, (5,))
    with pytest.raises(UserError, match="cannot import"):
        build_student("no_such_module_xyz:f", {}, 3, (6,))
    assert build_student("my_students:anything", {}, 3, (6,))(torch.zeros(2, 6)).shape == (2, 3)


def test_jitter_is_deterministic_and_shifts_by_at_most_n():
    x = torch.zeros(50, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the centre
    a = jitter_images(x, 2, torch.Generator().manual_seed(5))
    b = jitter_images(x, 2, torch.Generator().manual_seed(5))
    c = jitter_images(x, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape
    assert torch.equal(a.sum(dim=(1, 2, 3)), torch.ones(50))  # the pixel moved, never lost (|shift| <= 2 < 4)
    where = a[:, 0].flatten(1).argmax(dim=1)
    rows, cols = where // 9, where % 9
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    shifts = {(int(r), int(c)) for r, c in zip(rows, cols)}
    assert len(shifts) > 10  # 25 possible shifts, 50 draws
    assert torch.equal(jitter_images(x, 0, torch.Generator()), x)


def test_jitter_moves_content_and_fills_with_zeros():
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 5, 5)  # [B, H, W] form
    out = jitter_images(x, 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    # every value that is kept stays in its row/column order: out is a crop of the zero-padded input
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    crops = [padded[:, i : i + 5, j : j + 5] for i in range(3) for j in range(3)]
    assert any(torch.equal(out, crop) for crop in crops)


def test_jitter_refuses_flat_inputs():
    with pytest.raises(UserError, match="--jitter"):
        jitter_images(torch.zeros(3, 10), 1, torch.Generator())
