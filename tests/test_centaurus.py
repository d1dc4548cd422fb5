"""Centaurus: ``SSMLayer``, the (B, L, H) classes and the network against SPEC.md section 3.

The oracle (:func:`spec_ssm`) is SPEC.md section 3 written out here, in float64, from a layer's
own parameters: an explicit causal sum over time of ``exp(Lambda * tau)``, sharing no code with
the library (not ``ssm_operands``, not the float64 reference of ``codegen``). Every comparison
prints its error (max|a - b| / max|b|) before asserting: float64 within 1e-9, float32 2e-4.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from cases import rel_err

from contractssm.errors import ShapeError, SpecError
from contractssm.layers.centaurus import SSMLayer
from contractssm.layers.centaurus_lti import (
    Centaurus,
    CentaurusDWS,
    CentaurusFull,
    CentaurusNeck,
    CentaurusPWNeck,
)
from contractssm.layers.network import CentaurusNetwork

TOL64, TOL32 = 1e-9, 2e-4
MODES = ["dws", "s5", "neck", "full"]
#: num_states N, in_channels C, out_channels D, state_blocks R of the layer tests.
N, C, D, R = 4, 6, 5, 2


# -- the oracle: SPEC.md section 3, literally ---------------------------------------------------


def spec_ssm(mode: str, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """y[b, d, t] before the mixer, float64, from the raw parameters (A, log_dt, B, C, E).

    Differentiable: gradients flow back to the parameters (the gradient oracle).
    """
    p = {k: v.double() for k, v in params.items() if v is not None}
    x = x.double().to(torch.complex128)
    length = x.shape[-1]
    a_c = torch.complex(-torch.log1p(torch.exp(p["A"][..., 0])), p["A"][..., 1])
    dt = torch.exp(p["log_dt"])
    lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # (t, j)
    causal = (lag >= 0).to(torch.float64)

    def conv_kernel(rate):  # V[S, t - j] for j <= t, else 0: (S..., t, j)
        return torch.exp(rate[..., None, None] * lag.clamp(min=0).to(torch.float64)) * causal

    def c(t):
        return t.to(torch.complex128)

    if mode == "dws":  # Lambda[c,n] = dt[c,n] A_c[c,n]; z = Re sum_n E dt (V * x)
        v = conv_kernel(dt * a_c)
        y = torch.einsum("cn,cntj,bcj->bct", c(p["E"] * dt), v, x)
    elif mode == "s5":  # Lambda[s] = dt[s] A_c[s]; Re sum C[d,s] (V[s] * (dt[s] B[s,c] x[c]))
        v = conv_kernel(dt * a_c)
        y = torch.einsum("ds,stj,sc,bcj->bdt", c(p["C"]), v, c(dt[:, None] * p["B"]), x)
    elif mode == "neck":  # Lambda[n,m] = dt[n] A_c[n,m]
        v = conv_kernel(dt[:, None] * a_c)
        y = torch.einsum(
            "dn,nm,nmtj,nc,bcj->bdt", c(p["C"]), c(p["E"]), v, c(dt[:, None] * p["B"]), x
        )
    else:  # full: Lambda[d,c,n] = dt[d,n] A_c[d,c,n]
        v = conv_kernel(dt[:, None, :] * a_c)
        y = torch.einsum("dcn,dcntj,bcj->bdt", c(p["E"] * dt[:, None, :]), v, x)
    return y.real


def ssm_params(layer) -> dict[str, torch.Tensor]:
    return {k: getattr(layer, k) for k in ("A", "log_dt", "B", "C", "E")}


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random parameters (stable rates, dt in [0.01, 0.5]) and BatchNorm running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A":
                p[..., 0].copy_(torch.randn(p.shape[:-1], generator=gen))
                p[..., 1].copy_(3.0 * torch.randn(p.shape[:-1], generator=gen))
            elif leaf == "log_dt":
                u = torch.rand(p.shape, generator=gen)
                p.copy_(math.log(0.01) + u * (math.log(0.5) - math.log(0.01)))
            else:
                p.copy_(torch.randn(p.shape, generator=gen))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return module


def make_layer(mode, dtype=torch.float64, use_activations=False, seed=0):
    layer = SSMLayer(N, C, D, state_blocks=R, mode=mode, use_activations=use_activations)
    return randomize(layer, seed).to(dtype).eval()


# -- SSMLayer against the oracle ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("mode", MODES)
def test_ssm_output_matches_spec_kernel_stream_step(mode, dtype):
    tol = TOL64 if dtype == torch.float64 else TOL32
    layer = make_layer(mode, dtype)
    L = 23
    x = torch.randn(3, C, L, dtype=dtype, generator=torch.Generator().manual_seed(1))
    z_ref = spec_ssm(mode, ssm_params(layer), x)
    assert z_ref.shape == (3, C if mode == "dws" else D, L)

    z = layer.ssm(x)
    err = rel_err(z, z_ref)
    print(f"{mode} {dtype}: kernel err {err:.2e}")
    assert z.dtype == dtype and z.shape == z_ref.shape and err <= tol

    final = None
    for chunk in (1, 7, L):
        state, parts = layer.init_state(3), []
        for part in x.split(chunk, dim=-1):
            zp, state = layer.ssm_stream(part, state)
            parts.append(zp)
        err = rel_err(torch.cat(parts, dim=-1), z_ref)
        print(f"{mode} {dtype}: stream chunk={chunk} err {err:.2e}")
        assert err <= tol
        if final is not None:
            err_h = rel_err(state, final)
            print(f"{mode} {dtype}: final state chunk={chunk} vs chunk=1 err {err_h:.2e}")
            assert err_h <= tol
        final = state

    state, steps = layer.init_state(3), []
    for t in range(L):
        zt, state = layer.ssm_step(x[..., t], state)
        steps.append(zt)
    err, err_h = rel_err(torch.stack(steps, dim=-1), z_ref), rel_err(state, final)
    print(f"{mode} {dtype}: step x{L} err {err:.2e}, state vs stream {err_h:.2e}")
    assert err <= tol and err_h <= tol


@pytest.mark.parametrize("use_activations", [False, True], ids=["plain", "act"])
@pytest.mark.parametrize("mode", MODES)
def test_layer_output_forward_stream_step_inference(mode, use_activations):
    """The layer (mixer included, eval mode) = mixer(oracle) in every way of running it."""
    layer = make_layer(mode, use_activations=use_activations, seed=2)
    L = 19
    x = torch.randn(2, C, L, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y_ref = layer.mixer(spec_ssm(mode, ssm_params(layer), x))
        y = layer(x)
        err = rel_err(y, y_ref)
        print(f"{mode} act={use_activations}: forward err {err:.2e}")
        assert y.shape == (2, D, L) and err <= TOL64

        for chunk in (1, 7, L):
            state, parts = layer.init_state(2), []
            for part in x.split(chunk, dim=-1):
                yp, state = layer.stream(part, state)
                parts.append(yp)
            err = rel_err(torch.cat(parts, dim=-1), y_ref)
            print(f"{mode} act={use_activations}: stream chunk={chunk} err {err:.2e}")
            assert err <= TOL64

        state, steps = layer.init_state(2), []
        for t in range(L):
            yt, state = layer.step(x[..., t], state)
            steps.append(yt)
        err = rel_err(torch.stack(steps, dim=-1), y_ref)
        print(f"{mode} act={use_activations}: step err {err:.2e}")
        assert err <= TOL64

        layer.set_run_mode("inference")
        for sizes in ([1, 7, 3, 8], [L], [5, 5, 5, 4]):
            parts = [layer(part) for part in x.split(sizes, dim=-1)]
            err = rel_err(torch.cat(parts, dim=-1), y_ref)
            print(f"{mode} act={use_activations}: inference run mode chunks {sizes} err {err:.2e}")
            assert err <= TOL64
            assert layer.state is not None
            layer.reset_state()
        # Without a reset the next call continues the sequence (so it differs from a fresh one).
        layer(x)
        continued = layer(x)
        assert rel_err(continued, y_ref) > 1e-6
        with pytest.raises(ShapeError, match="batch size 2"):
            layer(x[:1])
        layer.reset_state()
        err = rel_err(layer(x), y_ref)
        print(f"{mode}: after reset_state err {err:.2e}")
        assert err <= TOL64
        layer.set_run_mode("training")
        first, second = layer(x), layer(x)  # stateless again: nothing carried over
        assert rel_err(first, y_ref) <= TOL64 and rel_err(second, y_ref) <= TOL64


@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_the_oracle(mode):
    layer = make_layer(mode, seed=4)
    x = torch.randn(2, C, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    names = [k for k, v in ssm_params(layer).items() if v is not None]
    w = torch.randn(2, C if mode == "dws" else D, 9, dtype=torch.float64)
    got = torch.autograd.grad((layer.ssm(x) * w).sum(), [getattr(layer, k) for k in names])
    ref = torch.autograd.grad(
        (spec_ssm(mode, ssm_params(layer), x) * w).sum(), [getattr(layer, k) for k in names]
    )
    for name, g, g_ref in zip(names, got, ref, strict=True):
        err = rel_err(g, g_ref)
        print(f"{mode}: grad {name} err {err:.2e}")
        assert err <= TOL64


# -- parameters, inits, checkpoints -------------------------------------------------------------

#: SPEC.md section 3 for N=4, C=6, D=5, R=2 (S = 8): the reference's state_dict.
BN_C = {"weight": (6,), "bias": (6,), "running_mean": (6,), "running_var": (6,)}
BN_D = {"weight": (5,), "bias": (5,), "running_mean": (5,), "running_var": (5,)}
STATE_DICT = {
    "dws": {
        "E": (6, 4),
        "A": (6, 4, 2),
        "log_dt": (6, 4),
        **{f"mixer.0.0.{k}": v for k, v in BN_C.items()},
        "mixer.0.0.num_batches_tracked": (),
        "mixer.1.weight": (5, 6, 1),
    },
    "s5": {"B": (8, 6), "C": (5, 8), "A": (8, 2), "log_dt": (8,)},
    "neck": {"B": (2, 6), "C": (5, 2), "E": (2, 4), "A": (2, 4, 2), "log_dt": (2,)},
    "full": {"E": (5, 6, 4), "A": (5, 6, 4, 2), "log_dt": (5, 4)},
}
#: Extra keys with use_activations=True: the act block (BatchNorm1d(D), ReLU).
ACT_KEYS = {
    "dws": {**{f"mixer.2.0.{k}": v for k, v in BN_D.items()}, "mixer.2.0.num_batches_tracked": ()},
    **{
        m: {**{f"mixer.0.{k}": v for k, v in BN_D.items()}, "mixer.0.num_batches_tracked": ()}
        for m in ("s5", "neck", "full")
    },
}


@pytest.mark.parametrize("use_activations", [False, True], ids=["plain", "act"])
@pytest.mark.parametrize("mode", MODES)
def test_state_dict_keys_and_shapes_match_spec(mode, use_activations):
    layer = SSMLayer(N, C, D, state_blocks=R, mode=mode, use_activations=use_activations)
    want = dict(STATE_DICT[mode], **(ACT_KEYS[mode] if use_activations else {}))
    got = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    print(f"{mode} act={use_activations}: {got}")
    assert got == want
    # Operands a mode does not have are None attributes, as in the reference.
    for name in ("B", "C", "E"):
        assert (getattr(layer, name) is None) == (name not in STATE_DICT[mode])
    # A checkpoint made of exactly these names and shapes loads strictly.
    checkpoint = {k: torch.randn(s) if s else torch.tensor(3) for k, s in want.items()}
    for k in checkpoint:
        if k.endswith("running_var"):
            checkpoint[k] = checkpoint[k].abs() + 0.1
    layer.load_state_dict(checkpoint, strict=True)
    assert torch.equal(layer.A, checkpoint["A"])


def test_mode_aliases_and_bad_arguments():
    for alias in ("pointwise", "pw", "s5"):
        layer = SSMLayer(N, C, D, state_blocks=R, mode=alias)
        assert layer.mode == "s5"
        assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == STATE_DICT["s5"]
    with pytest.raises(SpecError, match="unknown Centaurus mode 'grouped'"):
        SSMLayer(N, C, D, mode="grouped")
    with pytest.raises(SpecError, match="unknown norm"):
        SSMLayer(N, C, D, mode="s5", norm="nope", use_activations=True)
    with pytest.raises(SpecError, match="run_mode"):
        SSMLayer(N, C, D).set_run_mode("eval")


def geomspace(lo, hi, count):
    if count == 1:
        return torch.tensor([lo], dtype=torch.float64)
    k = torch.arange(count, dtype=torch.float64)
    return lo * (hi / lo) ** (k / (count - 1))


@pytest.mark.parametrize("mode", MODES)
def test_inits_match_spec(mode):
    layer = SSMLayer(N, C, D, state_blocks=R, mode=mode)
    A, dt = layer.A.detach().double(), layer.log_dt.detach().double().exp()
    softplus_inv_half = math.log(math.exp(0.5) - 1.0)
    q = {
        "dws": torch.arange(N).expand(C, N),
        "s5": torch.arange(R * N) % N,  # state s is q = s mod N of block s // N
        "neck": torch.arange(N).expand(R, N),
        "full": torch.arange(N).expand(D, C, N),
    }[mode].double()
    want_dt = {
        "dws": geomspace(1e-3, 1e-1, C)[:, None].expand(C, N),
        "s5": geomspace(1e-3, 1e-1, R)[torch.arange(R * N) // N],
        "neck": geomspace(1e-3, 1e-1, R),
        "full": geomspace(1e-3, 1e-1, D)[:, None].expand(D, N),
    }[mode]
    errs = {
        "Re": (A[..., 0] - softplus_inv_half).abs().max().item(),
        "Re A_c": (torch.nn.functional.softplus(A[..., 0]) - 0.5).abs().max().item(),
        "Im": (A[..., 1] - math.pi * q).abs().max().item(),
        "dt": ((dt - want_dt) / want_dt).abs().max().item(),
    }
    if mode == "dws":
        errs["E"] = (layer.E - 1 / math.sqrt(N)).abs().max().item()
    if mode == "full":
        errs["E"] = (layer.E - 1 / math.sqrt(C)).abs().max().item()
    if mode in ("s5", "neck"):
        errs["B"] = (layer.B - 1 / math.sqrt(C)).abs().max().item()
    print(f"{mode}: init errors {errs}")
    assert all(e <= 1e-6 for e in errs.values())


def test_random_inits_have_spec_scales():
    torch.manual_seed(0)
    s5 = SSMLayer(16, 8, 256, state_blocks=4, mode="s5")  # C (256, 64) ~ Normal(0, 2/64)
    neck = SSMLayer(16, 8, 512, state_blocks=32, mode="neck")  # C ~ N(0, 2/(32*16)), E ~ N(0, 2)
    ratios = {
        "s5 C": s5.C.std().item() / math.sqrt(2 / 64),
        "neck C": neck.C.std().item() / math.sqrt(2 / (32 * 16)),
        "neck E": neck.E.std().item() / math.sqrt(2),
    }
    print(f"std / spec std: {ratios}")
    assert all(abs(r - 1) < 0.1 for r in ratios.values())


@pytest.mark.parametrize("mode", MODES)
def test_pickle_and_state_dict_round_trips(mode):
    layer = make_layer(mode, dtype=torch.float32, use_activations=True, seed=6)
    x = torch.randn(2, C, 12)
    with torch.no_grad():
        y = layer(x)
        clone = pickle.loads(pickle.dumps(layer))
        fresh = SSMLayer(N, C, D, state_blocks=R, mode=mode, use_activations=True).eval()
        fresh.load_state_dict(layer.state_dict())
        # The carried inference state is not part of the checkpoint.
        layer.set_run_mode("inference")
        layer(x)
        assert set(layer.state_dict()) == set(fresh.state_dict())
        errs = (rel_err(clone(x), y), rel_err(fresh(x), y))
    print(f"{mode}: pickle err {errs[0]:.2e}, state_dict err {errs[1]:.2e}")
    assert errs == (0.0, 0.0)
    # The reference marks the recurrence parameters "sensitive" (smaller learning rate).
    sensitive = {n for n, p in clone.named_parameters() if getattr(p, "sensitive", False)}
    assert sensitive == {"A", "log_dt"}


def test_plan_and_state_shapes():
    for mode, shape in [("dws", (3, C, N, 2)), ("s5", (3, R * N, 2)), ("neck", (3, R, N, 2))]:
        layer = SSMLayer(N, C, D, state_blocks=R, mode=mode)
        assert tuple(layer.init_state(3).shape) == shape
        plan = layer.plan((3, C, 40))
        # Plans are keyed by canonical index names: the time index has size 40, batch 3.
        assert {3, 40} <= set(dict(plan.sizes).values())
    layer = SSMLayer(N, C, D, mode="full")
    assert tuple(layer.init_state(3, dtype=torch.float64).shape) == (3, D, C, N, 2)
    with pytest.raises(ShapeError, match="in_channels = 6"):
        layer.plan((3, 5, 40))


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bad_input_names_expected_and_received(mode):
    layer = SSMLayer(N, C, D, state_blocks=R, mode=mode)
    cases = [
        (torch.randn(C, 10), r"\(B, C, L\) with 3 axes, got 2 axes, shape \(6, 10\)"),
        (torch.randn(2, 5, 10), r"C = in_channels = 6, got C = 5"),
        (torch.ones(2, C, 10, dtype=torch.int64), r"floating-point.*got torch.int64"),
        (torch.randn(2, C, 0), r"at least one time step"),
    ]
    for x, pattern in cases:
        with pytest.raises(ShapeError, match=pattern) as info:
            layer(x)
        print(f"{mode}: {info.value}")
    with pytest.raises(ShapeError, match=r"\(B, C\) with 2 axes, got 3 axes"):
        layer.step(torch.randn(2, C, 1), layer.init_state(2))
    with pytest.raises(ShapeError, match="state has shape"):
        layer.stream(torch.randn(2, C, 4), layer.init_state(3))
    lti = CentaurusNeck(4, 2, 2)
    with pytest.raises(ShapeError, match=r"H = d_model = 4, got H = 3"):
        lti(torch.randn(2, 10, 3))
    with pytest.raises(ShapeError, match=r"\(B, L, H\) with 3 axes, got 2"):
        lti(torch.randn(10, 4))
    with pytest.raises(ShapeError, match=r"floating-point.*torch.int32"):
        lti(torch.ones(2, 10, 4, dtype=torch.int32))


# -- the network --------------------------------------------------------------------------------


def tiny_network(**kwargs):
    torch.manual_seed(0)
    net = CentaurusNetwork(
        2, [3, 4, 4], ["full", "neck", "s5"], num_states=2, state_blocks=2, **kwargs
    )
    return randomize(net, seed=7).eval()


def test_network_compiles_fullgraph_and_matches_eager():
    """Planning cannot be traced: the eager call plans every layer first (or use prepare)."""
    net = tiny_network(num_classes=3, downsample=[2, 1, 1])
    x = torch.randn(2, 2, 16)
    with torch.no_grad():
        y = net(x)  # eager: plans each layer's shape
        compiled = torch.compile(net, fullgraph=True)
        err = rel_err(compiled(x), y)
    print(f"compiled vs eager: rel err {err:.2e}")
    assert y.shape == (2, 3) and err <= TOL32


def test_network_chunked_streaming_equals_one_shot():
    net = tiny_network(downsample=[2, 1, 1]).double()
    x = torch.randn(3, 2, 24, dtype=torch.float64)
    with torch.no_grad():
        y = net.features(x)
        assert y.shape == (3, 4, 12)
        net.set_run_mode("inference")
        for sizes in ([2] * 12, [4, 10, 2, 8], [24]):  # multiples of the pooling factor 2
            parts = [net.features(part) for part in x.split(sizes, dim=-1)]
            err = rel_err(torch.cat(parts, dim=-1), y)
            print(f"network chunks {sizes}: err {err:.2e}")
            assert err <= TOL64
            net.reset_states()
            assert all(layer.state is None for layer in net.ssm_layers)
        net.set_run_mode("training")
        assert all(layer.run_mode == "training" for layer in net.ssm_layers)
        assert rel_err(net.features(x), y) == 0.0


def test_network_prepare_then_compile_and_classifier():
    net = tiny_network(num_classes=5)
    net.prepare((2, 2, 8))
    x = torch.randn(2, 2, 8)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 5)
    with pytest.raises(SpecError, match="one mode per layer"):
        CentaurusNetwork(2, [3, 4], ["s5"])


# -- the (B, L, H) classes ----------------------------------------------------------------------

H, BLOCKS, SUB = 3, 2, 2
LTI = {
    "neck": (CentaurusNeck, "neck"),
    "pwneck": (CentaurusPWNeck, "s5"),
    "dws": (CentaurusDWS, "dws"),
    "full": (CentaurusFull, "full"),
}


def make_lti(name, seed=8):
    cls, _ = LTI[name]
    return randomize(cls(H, BLOCKS, SUB), seed).double()


@pytest.mark.parametrize("name", list(LTI))
def test_lti_forward_matches_spec_and_step_reproduces_forward(name):
    model = make_lti(name)
    L = 17
    x = torch.randn(2, L, H, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    y_ref = spec_ssm(LTI[name][1], ssm_params(model), x.transpose(1, 2)).transpose(1, 2)
    y = model(x)
    err = rel_err(y, y_ref)
    print(f"{name}: forward vs oracle err {err:.2e}")
    assert y.shape == (2, L, H) and err <= TOL64

    cache = model.allocate_inference_cache(batch_size=2, max_seqlen=L, dtype=torch.float64)
    assert set(cache) >= {"lrnn_state"}
    steps = []
    for t in range(L):
        yt, cache = model.step(x[:, t], cache)
        steps.append(yt)
    err = rel_err(torch.stack(steps, dim=1), y)
    print(f"{name}: step x{L} vs forward err {err:.2e}")
    assert err <= TOL64

    state, parts = model.init_state(2), []
    for part in x.split(5, dim=1):
        yp, state = model.stream(part, state)
        parts.append(yp)
    err_y = rel_err(torch.cat(parts, dim=1), y)
    err_h = rel_err(state, cache["lrnn_state"])
    print(f"{name}: stream err {err_y:.2e}, final state vs step {err_h:.2e}")
    assert err_y <= TOL64 and err_h <= TOL64


@pytest.mark.parametrize("name", list(LTI))
def test_lti_discretize_and_compute_kernel_reproduce_forward(name):
    model = make_lti(name, seed=10)
    L = 11
    x = torch.randn(2, L, H, dtype=torch.float64)
    a_bar, b_bar, c_bar = model.discretize()
    K, b_norm = model.compute_kernel(L)
    S = a_bar.shape[0]
    assert a_bar.is_complex() and b_bar.shape == (S, H) and c_bar.shape == (H, S)
    assert K.shape == (S, L) and torch.equal(b_norm, b_bar)
    err_k = rel_err(K[:, 3], a_bar**3)
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]
    toeplitz = K[:, lag.clamp(min=0)] * (lag >= 0)  # (s, t, j)
    u = torch.einsum("sg,bjg->bsj", b_bar, x).to(torch.complex128)
    y_k = torch.einsum("hs,stj,bsj->bth", c_bar.to(torch.complex128), toeplitz, u).real
    err = rel_err(y_k, model(x))
    print(f"{name}: S={S}, K vs A_bar powers {err_k:.2e}, kernel form vs forward {err:.2e}")
    assert err_k <= TOL64 and err <= TOL64


@pytest.mark.parametrize("name", list(LTI))
def test_lti_lengths_give_each_sequence_state(name):
    model = make_lti(name, seed=11)
    L = 10
    x = torch.randn(4, L, H, dtype=torch.float64)
    lengths = torch.tensor([10, 3, 0, 7])
    y, states = model(x, lengths=lengths)
    assert rel_err(y, model(x)) == 0.0
    worst = 0.0
    for b, n in enumerate(lengths.tolist()):
        cache = model.allocate_inference_cache(1, dtype=torch.float64)
        for t in range(n):
            _, cache = model.step(x[b : b + 1, t], cache)
        want = cache["lrnn_state"][0]
        worst = max(worst, (states[b] - want).abs().max().item() / max(want.abs().max(), 1e-300))
        if n == 0:
            assert torch.count_nonzero(states[b]) == 0
    print(f"{name}: per-sequence states vs step-by-step, worst err {worst:.2e}")
    assert worst <= TOL64
    with pytest.raises(ShapeError, match="lengths must lie in"):
        model(x, lengths=torch.tensor([11, 1, 1, 1]))
    with pytest.raises(ShapeError, match="integer tensor of shape"):
        model(x, lengths=torch.ones(4))


def test_lti_interface_errors_and_factory():
    model = CentaurusNeck(4, 2, 2)
    with pytest.raises(ShapeError, match="time-varying"):
        model(torch.randn(2, 8, 4), integration_timesteps=torch.ones(2, 8))
    with pytest.raises(SpecError, match="zoh"):
        CentaurusNeck(4, 2, 2, discretization="bilinear")
    expected = {
        "neck": CentaurusNeck,
        "pointwise": CentaurusPWNeck,
        "pw": CentaurusPWNeck,
        "s5": CentaurusPWNeck,
        "dws": CentaurusDWS,
        "full": CentaurusFull,
    }
    for mode, cls in expected.items():
        m = Centaurus(4, 2, sub_state_dim=3, mode=mode)
        assert type(m) is cls and m(torch.randn(1, 5, 4)).shape == (1, 5, 4)
    shapes = {
        "neck": {"A": (2, 3, 2), "log_dt": (2,), "B": (2, 4), "C": (4, 2), "E": (2, 3)},
        "s5": {"A": (6, 2), "log_dt": (6,), "B": (6, 4), "C": (4, 6)},
        "dws": {"A": (4, 3, 2), "log_dt": (4, 3), "E": (4, 3)},
        "full": {"A": (4, 4, 3, 2), "log_dt": (4, 3), "E": (4, 4, 3)},
    }
    for mode, want in shapes.items():
        got = {k: tuple(v.shape) for k, v in Centaurus(4, 2, 3, mode=mode).state_dict().items()}
        assert got == want, mode
    with pytest.raises(SpecError, match="unknown Centaurus mode"):
        Centaurus(4, 2, 3, mode="mamba")
