"""The views target kind against NumPy: per view top-k with the exact tail (of the combined
distribution), dense per view, params stored exactly; its sizes."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from transferset.errors import UserError
from transferset.format.codecs import get_codec
from transferset.format.provenance import Provenance


def _provenance(c: int, views: int, k=None, storage="float32", temperature=2.0) -> Provenance:
    options = {"views": views, "augment": "random-resized-crop(8),hflip(p=0.5)", "seed": 0, **({"k": k} if k else {})}
    return Provenance(target_kind="views", num_classes=c, temperature=temperature, combine="arithmetic", storage_dtype=storage,
                      teachers=[{"name": "t"}], sources=[{"path": "s"}], input={"columns": ["x"], "shape": [1, 8, 8]},
                      target_options=options)


def _round_trip(codec, prov, targets, params):
    columns = codec.encode(targets, None, prov, params=params)
    fields = codec.arrow_fields(prov)
    table = pa.table({f.name: columns[f.name] for f in fields}, schema=pa.schema(fields))
    codec.check_schema(table.schema, prov, "here")
    return table, codec.decode(table, prov, "here")


def test_topk_with_tail_per_view_matches_numpy():
    rng = np.random.default_rng(0)
    b, v, c, k, t = 5, 3, 50, 4, 2.0
    logits = rng.normal(0, 3, (b, v, c)).astype(np.float32)
    params = rng.integers(0, 8, (b, v, 5))
    prov = _provenance(c, v, k, temperature=t)
    codec = get_codec("views")
    table, got = _round_trip(codec, prov, torch.from_numpy(logits), params)
    z = logits.astype(np.float64) / t
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    order = np.argsort(-logp, axis=-1)[..., :k]
    assert np.array_equal(got["support_ids"], order)
    np.testing.assert_allclose(got["support_logprobs"], np.take_along_axis(logp, order, -1), atol=1e-5)
    rest = np.exp(logp).sum(-1) - np.take_along_axis(np.exp(logp), order, -1).sum(-1)
    np.testing.assert_allclose(got["tail_logmass"], np.log(rest), rtol=1e-5)
    assert np.array_equal(got["view_params"], params) and got["view_params"].shape == (b, v, 5)
    assert table.schema.field("target_token_ids").type.value_type.value_type == pa.int16()  # C <= 32767


def test_dense_per_view_keeps_each_views_distribution():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (4, 2, 10)).astype(np.float32)
    prov = _provenance(10, 2, storage="float32")
    _, got = _round_trip(get_codec("views"), prov, torch.from_numpy(logits), rng.integers(0, 8, (4, 2, 5)))
    want = logits - logits.max(-1, keepdims=True)
    np.testing.assert_allclose(got["target_logits"], want, atol=1e-6)


def test_sizes_and_options():
    codec = get_codec("views")
    assert codec.bytes_per_row(_provenance(1000, 16, k=10, storage="float16")) == 16 * (5 * 2 + 10 * (2 + 2) + 4)
    assert codec.bytes_per_row(_provenance(10, 8, storage="float16")) == 8 * (5 * 2 + 10 * 2)
    with pytest.raises(UserError, match="views are made with --views V --augment SPEC"):
        codec.parse_options("3")
    with pytest.raises(UserError, match="keeps 1..9 of the teachers' 10 classes per view"):
        codec.check_options({"views": 2, "augment": "hflip", "seed": 0, "k": 10}, 10)
    with pytest.raises(UserError, match="--views 0 is out of range"):
        codec.check_options({"views": 0, "augment": "hflip", "seed": 0}, 10)
