"""Hypothesis properties of the combination maths and the format layer."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from transferset.combine import combine, normalised_weights, soft_targets
from transferset.format.codecs.dense import fixed_floats
from transferset.format.manifest import ShardRecord, read_manifest, write_manifest
from transferset.format.provenance import Provenance
from transferset.format.schema import METADATA_KEY, parquet_options, target_schema

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def ensembles(draw):
    k = draw(st.integers(1, 5))
    b = draw(st.integers(1, 6))
    c = draw(st.integers(2, 40))
    z = draw(arrays(np.float32, (k, b, c), elements=finite))
    t = draw(st.floats(0.05, 50.0))
    return z, t


@settings(max_examples=150, deadline=None)
@given(ensembles(), st.sampled_from(["arithmetic", "geometric"]))
def test_targets_are_distributions(ens, method):
    z, t = ens
    p = soft_targets(combine(torch.from_numpy(z), method, t, normalised_weights(None, z.shape[0])), t).double().numpy()
    assert np.isfinite(p).all() and (p >= 0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)


@settings(max_examples=100, deadline=None)
@given(ensembles(), st.integers(2, 5))
def test_methods_agree_when_all_members_agree(ens, k):
    z, t = ens
    same = np.repeat(z[:1], k, axis=0)
    w = normalised_weights(None, k)
    a = soft_targets(combine(torch.from_numpy(same), "arithmetic", t, w), t).numpy()
    g = soft_targets(combine(torch.from_numpy(same), "geometric", t, w), t).numpy()
    np.testing.assert_allclose(a, g, atol=2e-5)


@settings(max_examples=100, deadline=None)
@given(ensembles(), st.floats(-100, 100), st.sampled_from(["arithmetic", "geometric"]))
def test_per_row_constant_on_one_member_changes_nothing(ens, shift, method):
    z, t = ens
    w = normalised_weights(None, z.shape[0])
    rows = np.linspace(-1, 1, z.shape[1], dtype=np.float32)[:, None] * np.float32(shift)
    moved = z.copy()
    moved[0] = moved[0] + rows
    a = soft_targets(combine(torch.from_numpy(z), method, t, w), t).numpy()
    b = soft_targets(combine(torch.from_numpy(moved), method, t, w), t).numpy()
    np.testing.assert_allclose(a, b, atol=5e-4)


@settings(max_examples=100, deadline=None)
@given(ensembles())
@example(ens=(np.array([[[0.0] * 6, [0.0] * 6, [4467.0, 4466.0, 0.0, 0.0, 0.0, 0.0]]], dtype=np.float32), 1.25))
def test_arithmetic_mean_lies_between_the_members(ens):
    z, t = ens
    members = torch.softmax(torch.from_numpy(z).double() / t, dim=-1).numpy()  # (K, B, C)
    p = soft_targets(combine(torch.from_numpy(z), "arithmetic", t, normalised_weights(None, z.shape[0])), t).double().numpy()
    assert (p >= members.min(0) - 1e-6).all() and (p <= members.max(0) + 1e-6).all()


input_types = st.sampled_from([pa.uint8(), pa.int16(), pa.float32(), pa.float64()])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 70),
    c=st.integers(2, 12),
    k=st.integers(0, 3),
    dtype=st.sampled_from(["float16", "float32"]),
    t=st.floats(0.1, 30.0),
    width=st.integers(1, 9),
    value_type=input_types,
    seed=st.integers(0, 2**31 - 1),
)
def test_format_round_trip(tmp_path_factory, n, c, k, dtype, t, width, value_type, seed):
    """Random schemas, dtypes, C, K, T and null patterns -> write -> read gives the same rows and metadata."""
    rng = np.random.default_rng(seed)
    directory = tmp_path_factory.mktemp("fmt")
    inputs = pa.field("x", pa.list_(pa.field("element", value_type, nullable=False), width), nullable=False)
    provenance = Provenance(
        target_kind="dense", num_classes=c, temperature=t, combine="geometric", storage_dtype=dtype,
        teachers=[{"name": f"t{i}"} for i in range(max(k, 1))], sources=[{"path": "s"}],
        input={"columns": ["x"], "shape": [width]}, teacher_logits_kept=bool(k),
    )
    schema = target_schema(provenance, [inputs])
    target = (rng.normal(0, 10, (n, c))).astype(np.float32)
    labels = [None if rng.random() < 0.3 else int(rng.integers(0, c)) for _ in range(n)]
    raw_inputs = rng.integers(0, 100, n * width).astype(value_type.to_pandas_dtype())
    columns = {
        "id": pa.array([f"r{i}" for i in range(n)]), "source": pa.array(["s"] * n), "label": pa.array(labels, pa.int32()),
        "logits": fixed_floats(target, dtype),
    }
    if k:
        members = rng.normal(0, 5, (n * k, c)).astype(np.float32)
        columns["teacher_logits"] = pa.FixedSizeListArray.from_arrays(fixed_floats(members, dtype), k)
    columns["x"] = pa.FixedSizeListArray.from_arrays(pa.array(raw_inputs, value_type), width)
    batch = pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)
    path = directory / "part-00000.parquet"
    with pq.ParquetWriter(path, schema, **parquet_options(schema, provenance)) as w:
        w.write_batch(batch, row_group_size=max(1, n // 3))
    write_manifest(directory, provenance, [ShardRecord(path.name, 0, n, sum(v is not None for v in labels), path.stat().st_size, "x")])

    back = pq.read_table(path)
    assert back.schema.equals(schema, check_metadata=False)
    assert Provenance.decode_bytes(back.schema.metadata[METADATA_KEY], "shard") == provenance
    assert back.column("label").to_pylist() == labels
    stored = back.column("logits").combine_chunks().flatten().to_numpy().reshape(n, c)
    expected = target.astype(np.float16).astype(np.float32) if dtype == "float16" else target
    np.testing.assert_array_equal(stored.astype(np.float32), expected)
    assert back.column("x").combine_chunks().flatten().to_numpy().tolist() == raw_inputs.tolist()
    manifest = read_manifest(directory)
    assert manifest.rows == n and manifest.provenance == provenance
