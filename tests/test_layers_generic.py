"""DeclaredSSM (a layer from any declaration) and the SSMModule base."""

from __future__ import annotations

import pickle

import pytest
import torch
from cases import rel_err

import contractssm
from contractssm.codegen.reference import reference
from contractssm.errors import ShapeError, SpecError
from contractssm.layers import DeclaredSSM, bucket_length

GROUPED = "y[b,g,d,l] = C[g,d,s] * ssm A[g,s;l] * B[g,s,c] * signal x[b,g,c,l]"
SIZES = {"g": 2, "c": 5, "d": 3, "s": 4}


def _layer(**options):
    torch.manual_seed(0)
    return DeclaredSSM(GROUPED, SIZES, **options).double()


def _reference(layer, x, h0=None):
    ops = {k: v.detach() for k, v in layer.ssm_operands().items()}
    ops["x"] = x
    return reference(layer.graph, ops, h0)


def test_kernel_stream_step_match_reference():
    layer = _layer()
    x = torch.randn(3, 2, 5, 29, dtype=torch.float64)
    y_ref, h_ref = _reference(layer, x)
    err = rel_err(layer(x), y_ref)
    state = layer.init_state(3, dtype=torch.float64)
    ys = []
    for t in range(0, 29, 7):
        y, state = layer.stream(x[..., t : t + 7], state)
        ys.append(y)
    err_stream = rel_err(torch.cat(ys, -1), y_ref)
    err_state = rel_err(torch.view_as_complex(state), h_ref)
    state = layer.init_state(3, dtype=torch.float64)
    steps = []
    for t in range(29):
        y, state = layer.step(x[..., t], state)
        steps.append(y)
    err_step = rel_err(torch.stack(steps, -1), y_ref)
    print(f"kernel {err:.2e} stream {err_stream:.2e} state {err_state:.2e} step {err_step:.2e}")
    assert max(err, err_stream, err_state, err_step) <= 1e-9


def test_parameters_are_real_and_rate_is_stable():
    layer = _layer()
    assert all(not p.is_complex() for p in layer.parameters())
    with torch.no_grad():
        layer.A[..., 0] = -1e4
        layer.A_log_dt.fill_(30.0)
    rate = layer.rate()
    print(f"max Re(Lambda) after pushing raw parameters: {rate.real.max().item():.3e}")
    assert (rate.real <= 0).all() and torch.isfinite(layer(torch.randn(1, 2, 5, 8).double())).all()


def test_length_bucketing_is_exact_and_reuses_plans():
    plain, bucketed = _layer(), _layer(length_bucket="pow2")
    for length in (5, 13, 16, 31):
        x = torch.randn(2, 2, 5, length, dtype=torch.float64)
        err = rel_err(bucketed(x), plain(x))
        print(f"L={length}: bucketed vs plain {err:.2e}")
        assert err <= 1e-12
    lengths = {key[0][-1] for key in bucketed._executors}
    assert lengths == {8, 16, 32}
    assert bucket_length(100, 64) == 128 and bucket_length(7, None) == 7
    with pytest.raises(ShapeError, match="length_bucket"):
        _layer(length_bucket="sometimes")


def test_grouped_custom_mode_trains():
    torch.manual_seed(1)
    layer = DeclaredSSM(GROUPED, SIZES)
    x = torch.randn(8, 2, 5, 64)
    target = torch.cumsum(x[:, :, :3], dim=-1) * 0.1
    opt = torch.optim.Adam(layer.parameters(), lr=2e-2)
    losses = []
    for _ in range(60):
        loss = (layer(x) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < 0.5 * losses[0]


def test_compile_after_prepare_matches_eager():
    layer = DeclaredSSM(GROUPED, SIZES)
    x = torch.randn(2, 2, 5, 32)
    layer.prepare(tuple(x.shape))
    compiled = torch.compile(layer, fullgraph=True)
    err = rel_err(compiled(x), layer(x))
    print(f"compiled vs eager: {err:.2e}")
    assert err <= 1e-5


def test_pickle_and_state_dict_round_trip():
    layer = _layer()
    x = torch.randn(2, 2, 5, 10, dtype=torch.float64)
    y = layer(x)
    clone = pickle.loads(pickle.dumps(layer))
    fresh = DeclaredSSM(GROUPED, SIZES).double()
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(clone(x), y) and torch.equal(fresh(x), y)


def test_bad_input_names_the_culprit():
    layer = _layer()
    with pytest.raises(ShapeError, match=r"4 axes"):
        layer(torch.randn(2, 5, 10, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"'c'.*7.*5|'c'.*5.*7"):
        layer(torch.randn(2, 2, 7, 10, dtype=torch.float64))
    with pytest.raises(ShapeError, match="floating"):
        layer(torch.ones(2, 2, 5, 10, dtype=torch.long))
    with pytest.raises(ShapeError, match="state has shape"):
        layer.stream(torch.randn(2, 2, 5, 4, dtype=torch.float64), torch.zeros(3, 2, 4, 2))
    with pytest.raises(SpecError, match="'s'"):
        DeclaredSSM(GROUPED, {"g": 2, "c": 5, "d": 3})
    with pytest.raises(SpecError, match="'Q'"):
        DeclaredSSM(GROUPED, SIZES, init={"Q": torch.zeros(1)})


def test_plan_for_reports_the_plan():
    layer = _layer()
    p = layer.plan_for((4, 2, 5, 256), dtype=torch.float64)
    assert isinstance(p, contractssm.Plan) and dict(p.sizes)


def test_state_dtype_and_device_are_checked():
    layer = _layer()
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    with pytest.raises(ShapeError, match=r"dtype torch\.float32, expected torch\.float64"):
        layer.stream(x, layer.init_state(2, dtype=torch.float32))
    with pytest.raises(ShapeError, match="must be a real floating tensor"):
        layer.stream(x, layer.init_state(2, dtype=torch.float64).to(torch.int64))


def test_nan_and_inf_propagate_without_a_crash():
    layer = _layer()
    x = torch.randn(2, 2, 5, 16, dtype=torch.float64)
    x[0, 0, 0, 3] = float("nan")
    x[1, 1, 2, 5] = float("inf")
    y = layer(x)
    print(f"non-finite outputs: {(~torch.isfinite(y)).sum().item()} of {y.numel()}")
    # FFT and Toeplitz algorithms spread a non-finite sample over the whole sequence (0 * nan
    # is nan); what is promised is propagation without a crash.
    assert not torch.isfinite(y[0, :, :, 3:]).all() and not torch.isfinite(y[1, :, :, 5:]).all()
