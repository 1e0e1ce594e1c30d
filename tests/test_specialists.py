"""Specialist ensembles (`generate --combine specialists`): the solver against an
independent SciPy optimiser, its degenerate cases, and the CLI end to end."""

import contextlib
import io

import numpy as np
import polars as pl
import pytest
import scipy.optimize
import torch

from conftest import run_cli, write_pixels_source
from transferset.format.manifest import read_manifest
from transferset.specialists import Specialists, active_specialists, combine_specialists, solve

import teacher_models

# -- the specialists the CLI tests load by name (test_specialists:spec_a) -------------------


def spec_a() -> torch.nn.Module:
    return teacher_models.mlp(11, classes=4)  # 3 classes, then the dustbin


def spec_b() -> torch.nn.Module:
    return teacher_models.mlp(12, classes=4)


# -- an independent reference: F(q) in float64, minimised by L-BFGS over softmax(u) -----------


def objective(q, a, specs):
    """F(q) up to constants, and its gradient: -sum_c a_c log q_c - sum_m alpha_m sum_j p_m(j) log (A_m q)_j."""
    f, g = -(a * np.log(q)).sum(), -a / q
    for cls, p, alpha in specs:
        rest = np.ones(len(q), bool)
        rest[cls] = False
        collapsed = np.append(q[cls], q[rest].sum())
        f -= alpha * (p * np.log(collapsed)).sum()
        r = alpha * p / collapsed
        g[cls] -= r[:-1]
        g[rest] -= r[-1]
    return f, g


def reference(a, specs):
    def fun(u):
        q = np.exp(u - u.max())
        q /= q.sum()
        f, g = objective(q, a, specs)
        return f, q * (g - (q * g).sum())  # chain rule through the softmax

    res = scipy.optimize.minimize(fun, np.log(a), jac=True, method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000))
    q = np.exp(res.x - res.x.max())
    return q / q.sum()


def random_case(rng, b=5):
    c, g, m = int(rng.integers(3, 12)), int(rng.integers(1, 3)), int(rng.integers(1, 4))
    w = rng.uniform(0.2, 1, g)
    classes = [rng.choice(c, size=int(rng.integers(1, c)), replace=False) for _ in range(m)]
    log_pg = torch.log_softmax(torch.tensor(rng.normal(size=(g, b, c)) * rng.uniform(0.5, 4), dtype=torch.float32), -1)
    log_ps = [torch.log_softmax(torch.tensor(rng.normal(size=(b, len(s) + 1)) * 3, dtype=torch.float32), -1) for s in classes]
    return log_pg, w / w.sum(), log_ps, classes, rng.uniform(0.5, 2, m), rng.random((m, b)) < 0.7


def solved(log_pg, w, log_ps, classes, alpha, active):
    return solve(log_pg, torch.tensor(w, dtype=torch.float32), log_ps, [torch.tensor(s) for s in classes],
                 torch.tensor(alpha, dtype=torch.float32), torch.tensor(active))


def row_problem(log_pg, w, log_ps, classes, alpha, active, b):
    a = (w[:, None] * np.exp(log_pg[:, b].double().numpy())).sum(0)
    specs = [(classes[m], np.exp(log_ps[m][b].double().numpy()), alpha[m]) for m in range(len(classes)) if active[m, b]]
    return a, specs


# -- the solver ---------------------------------------------------------------------------------


def test_solver_matches_scipy_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(25):
        case = random_case(rng)
        sol = solved(*case)
        for b in range(sol.log_q.shape[0]):
            a, specs = row_problem(*case, b)
            want = reference(a, specs)
            got = np.exp(sol.log_q[b].double().numpy())
            np.testing.assert_allclose(got, want, atol=2e-5)
            # the documented bound: F(returned q) - min F <= gap (plus float32 rounding of q)
            assert objective(got / got.sum(), a, specs)[0] - objective(want, a, specs)[0] <= float(sol.gap[b]) + 1e-5


def test_no_active_specialist_is_the_generalists_arithmetic_mean_exactly():
    log_pg, w, log_ps, classes, alpha, _ = random_case(np.random.default_rng(1))
    sol = solved(log_pg, w, log_ps, classes, alpha, np.zeros((len(classes), 5), bool))
    mean = torch.logsumexp(torch.log(torch.tensor(w, dtype=torch.float32)).view(-1, 1, 1) + log_pg, dim=0)
    assert sol.iterations == 0 and torch.equal(sol.log_q, mean)


def test_one_specialist_has_a_closed_form():
    """With one generalist (weight 1) and one specialist: q_c = (a_c + p(c)) / 2 on its
    classes, and the rest in proportion to the generalist (derived by hand from the KKT conditions)."""
    rng = np.random.default_rng(2)
    a = rng.dirichlet(np.ones(8))
    p = rng.dirichlet(np.ones(4))
    cls = np.array([6, 1, 3])
    sol = solve(torch.tensor(np.log(a), dtype=torch.float32)[None, None], torch.ones(1),
                [torch.tensor(np.log(p), dtype=torch.float32)[None]], [torch.tensor(cls)], torch.ones(1), torch.ones(1, 1, dtype=torch.bool))
    want = np.empty(8)
    want[cls] = (a[cls] + p[:3]) / 2
    rest = np.setdiff1d(np.arange(8), cls)
    want[rest] = a[rest] / a[rest].sum() * (a[rest].sum() + p[3]) / 2
    np.testing.assert_allclose(np.exp(sol.log_q[0].double().numpy()), want, rtol=1e-5)


@pytest.mark.parametrize("layout", ["disjoint", "shared class"])
def test_degenerate_layouts_match_scipy(layout):
    """Specialists over disjoint subsets, and a class (4) that two specialists cover."""
    rng = np.random.default_rng(3)
    classes = [np.array([0, 1, 2]), np.array([5, 6])] if layout == "disjoint" else [np.array([3, 4]), np.array([4, 8, 9])]
    log_pg = torch.log_softmax(torch.tensor(rng.normal(size=(1, 6, 10)) * 3, dtype=torch.float32), -1)
    log_ps = [torch.log_softmax(torch.tensor(rng.normal(size=(6, len(s) + 1)) * 3, dtype=torch.float32), -1) for s in classes]
    case = (log_pg, np.ones(1), log_ps, classes, np.ones(2), np.ones((2, 6), bool))
    sol = solved(*case)
    for b in range(6):
        np.testing.assert_allclose(np.exp(sol.log_q[b].double().numpy()), reference(*row_problem(*case, b)), atol=2e-5)


def test_every_step_lowers_f():
    """EM is monotone: F never rises from one step to the next."""
    from transferset.specialists import _Problem

    rng = np.random.default_rng(4)
    log_pg, w, log_ps, classes, alpha, _ = random_case(rng, b=1)
    active = torch.ones(len(classes), 1, dtype=torch.bool)
    w32 = torch.tensor(w, dtype=torch.float32)
    log_a = torch.logsumexp(torch.log(w32).view(-1, 1, 1) + log_pg, dim=0)
    problem = _Problem(log_a, w32.sum(), log_ps, [torch.tensor(s) for s in classes], torch.tensor(alpha, dtype=torch.float32), active)
    a, specs = row_problem(log_pg, w, log_ps, classes, alpha, active.numpy(), 0)
    log_q, values = log_a.clone(), []
    for _ in range(30):
        log_q = problem.step(log_q)
        log_q = log_q - torch.logsumexp(log_q, -1, keepdim=True)
        q = np.exp(log_q[0].double().numpy())
        values.append(objective(q / q.sum(), a, specs)[0])
    assert all(later <= earlier + 1e-6 for earlier, later in zip(values, values[1:]))


def test_extreme_logits_stay_finite_and_tiny_classes_keep_their_order():
    z = torch.tensor([[[1e4, 0.0, -1e4, 5.0, -3e3]]])
    special = Specialists([torch.tensor([[0.0, 2e3, -2e3]])], [torch.tensor([0, 2])], torch.ones(1), top=1)
    target = combine_specialists(z, torch.ones(1), special, temperature=1.0)
    assert torch.isfinite(target).all() and target.max() == 0


def test_top_n_decides_who_votes():
    log_mix = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]]))
    classes = [torch.tensor([0]), torch.tensor([1, 2]), torch.tensor([3])]
    assert active_specialists(log_mix, classes, 1).tolist() == [[True, False], [False, False], [False, True]]
    assert active_specialists(log_mix, classes, 2).tolist() == [[True, False], [True, True], [False, True]]


def test_temperature_applies_to_every_member_and_is_baked_in():
    rng = np.random.default_rng(5)
    zg = torch.tensor(rng.normal(size=(2, 4, 6)) * 4, dtype=torch.float32)
    zs = torch.tensor(rng.normal(size=(4, 3)) * 4, dtype=torch.float32)
    special = Specialists([zs], [torch.tensor([2, 4])], torch.ones(1), top=6)  # top = C: votes on every row
    w = torch.tensor([0.25, 0.75])
    target = combine_specialists(zg, w, special, temperature=3.0)
    q = torch.softmax(target / 3.0, -1).double().numpy()
    for b in range(4):
        a = (w.double().numpy()[:, None] * torch.softmax(zg[:, b].double() / 3.0, -1).numpy()).sum(0)
        want = reference(a, [(np.array([2, 4]), torch.softmax(zs[b].double() / 3.0, -1).numpy(), 1.0)])
        np.testing.assert_allclose(q[b], want, atol=2e-5)
    assert (target.max(-1).values == 0).all()


# -- the CLI --------------------------------------------------------------------------------------

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "16", "--quiet"]
SPECIALISTS = ["--specialist", "test_specialists:spec_a", "--classes", "3,5,7",
               "--specialist", "test_specialists:spec_b", "--classes", "2,4,8"]


@pytest.fixture
def source(tmp_path):
    """40 rows of sparse pixels: the generalists' top class is 4 (spec_b votes), 7 (spec_a) or 9 (neither)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 17, (40, 64)) * (rng.random((40, 64)) < rng.random((40, 1)) ** 3)
    return write_pixels_source(tmp_path / "src.parquet", pixels.astype(np.uint8), rng.integers(0, 10, 40))


def test_generate_with_specialists_end_to_end(tmp_path, source):
    out = tmp_path / "ts"
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", "--teacher-weight", "3",
            *SPECIALISTS, "--source", source, *BASE, "--combine", "specialists", "-T", "2", "--storage-dtype", "float32",
            "--out", out, check=True)
    table = pl.read_parquet(f"{out}/*.parquet")
    x = torch.from_numpy(np.stack(table["pixels"].to_numpy()).astype(np.float32) / 16).view(-1, 1, 8, 8)
    with torch.no_grad():
        za, zb, z1, z2 = (f()(x).double() for f in (teacher_models.tiny_a, teacher_models.tiny_b, spec_a, spec_b))
    pg = (0.25 * torch.softmax(za / 2, -1) + 0.75 * torch.softmax(zb / 2, -1)).numpy()
    got = torch.softmax(torch.tensor(np.stack(table["logits"].to_numpy())).double() / 2, -1).numpy()
    voted = []
    for b in range(len(pg)):
        top1 = {int(np.argmax(pg[b]))}  # the default --specialist-top 1
        specs = [(np.array(c), torch.softmax(z[b] / 2, -1).numpy(), 1.0) for c, z in (([3, 5, 7], z1), ([2, 4, 8], z2)) if top1 & set(c)]
        voted.append(len(specs))
        np.testing.assert_allclose(got[b], reference(pg[b], specs), atol=2e-5)
    assert set(voted) == {0, 1}  # rows with and without a voting specialist were checked
    prov = read_manifest(out).provenance
    assert prov.combine == "specialists" and prov.num_classes == 10
    assert [t.get("classes") for t in prov.teachers] == [None, None, [3, 5, 7], [2, 4, 8]]
    assert [t.get("specialist_top") for t in prov.teachers[2:]] == [1, 1]
    assert [t["weight"] for t in prov.teachers] == [0.25, 0.75, 1.0, 1.0]


def _generate(tmp_path, *args):
    import cli

    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = cli.main(["generate", *map(str, args), *BASE, "--out", str(out)])
        except SystemExit as stop:  # argparse errors
            code = stop.code
    published = out.exists() and ((out / "_manifest.json").exists() or list(out.glob("part-*.parquet")))
    return code, err.getvalue(), published


TINY_A = ["--teacher", "teacher_models:tiny_a"]


@pytest.mark.parametrize("args, expected", [
    ([*TINY_A, "--specialist", "test_specialists:spec_a", "--classes", "3,5,12"],
     "--classes 3,5,12 of --specialist test_specialists:spec_a has class 12, outside [0, 10) for the generalists' 10 classes; fix --classes"),
    ([*TINY_A, "--specialist", "test_specialists:spec_a", "--classes", "3,5,3"],
     "--classes 3,5,3 of --specialist test_specialists:spec_a repeats class 3; list each class once"),
    ([*TINY_A, "--specialist", "test_specialists:spec_a", "--classes", "3,5"],
     "--specialist test_specialists:spec_a returns 4 logits per row, but --classes 3,5 needs 3 (its 2 classes, then the dustbin)"),
    ([*TINY_A, "--specialist", "teacher_models:tiny_b", "--classes", "0,1,2,3,4,5,6,7,8,9"],
     "lists all 10 classes, leaving nothing for its dustbin"),
    (SPECIALISTS, "the following arguments are required: --teacher"),
    ([*TINY_A], "--combine specialists needs at least one --specialist FILE --classes LIST"),
    ([*TINY_A, *SPECIALISTS, "--combine", "arithmetic"], "--specialist is used only by --combine specialists, not --combine arithmetic"),
    ([*TINY_A, *SPECIALISTS, "--keep-teacher-logits"], "--keep-teacher-logits cannot store specialists' logits"),
    ([*TINY_A, "--classes", "3,5,8"], "--classes must follow the --specialist it belongs to"),
    ([*TINY_A, "--specialist", "test_specialists:spec_a"], "--specialist test_specialists:spec_a needs --classes C,C,... after it"),
    ([*TINY_A, "--specialist", "test_specialists:spec_a", "--classes", "3,five"], "--classes '3,five' must be class indices"),
    ([*TINY_A, *SPECIALISTS, "--specialist-top", "0"], "--specialist-top must be a positive number of classes, got 0"),
], ids=["class-outside", "class-repeated", "wrong-width", "all-classes", "no-generalist", "no-specialist", "other-combine",
        "keep-teacher-logits", "classes-first", "no-classes", "classes-letters", "top-zero"])
def test_bad_input(tmp_path, source, args, expected):
    combine = [] if "--combine" in args else ["--combine", "specialists"]
    code, err, published = _generate(tmp_path, *args, *combine, "--source", source)
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not published


def test_other_classes_change_the_resume_key(tmp_path, source):
    args = [*TINY_A, "--combine", "specialists", "--source", source, "--specialist", "test_specialists:spec_a"]
    assert _generate(tmp_path, *args, "--classes", "3,5,7")[0] == 0
    code, err, _ = _generate(tmp_path, *args, "--classes", "3,5,6")
    assert code == 2 and "different configuration (changed: the teachers" in err, err


@pytest.mark.parametrize("setting, expected", [
    ({"loss": "mse"}, "stores a specialist ensemble's distribution (no teacher logits to match)"),
    ({"temperature": 4.0}, "but its specialists targets have T baked in"),
])
def test_trainer_treats_specialist_targets_as_t_baked_in(setting, expected):
    from train.config import TrainConfig
    from transferset.errors import UserError

    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(transfer="set", **setting).check_data(has_targets=True, num_labelled=10, combine="specialists", stored_temperature=2.0,
                                                          target_kind="dense", kind_losses=("kd", "mse"))
