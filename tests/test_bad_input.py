"""Bad input at every public entry point: one ShapeError naming the expected and the received.

Complements the per-layer tests (test_centaurus, test_models, test_layers_generic) with the
cases issue 8 lists that cut across them: batch 0, L = 0, a state on another device, and
the functional entry points (``evaluate``, ``evaluate_step``).
"""

from __future__ import annotations

import pytest
import torch

import contractssm
from contractssm.errors import ShapeError
from contractssm.layers.centaurus import SSMLayer
from contractssm.layers.generic import DeclaredSSM
from contractssm.layers.lru import LRU
from contractssm.layers.s4 import S4
from contractssm.layers.s4d import S4D
from contractssm.layers.s5 import S5

H = 3

# (name, layer factory, an input of the right layout with batch B and length L)
LAYERS = {
    "ssm-neck": (
        lambda: SSMLayer(2, 4, 4, state_blocks=2, mode="neck"),
        lambda b, n: torch.randn(b, 4, n),
    ),
    "declared": (
        lambda: DeclaredSSM(
            "y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]", {"c": 4, "d": 4, "s": 3}
        ),
        lambda b, n: torch.randn(b, 4, n),
    ),
    "s4d": (lambda: S4D(H, 4), lambda b, n: torch.randn(b, n, H)),
    "s5": (lambda: S5(H, 4), lambda b, n: torch.randn(b, n, H)),
    "lru": (lambda: LRU(H, 4), lambda b, n: torch.randn(b, n, H)),
    "s4": (lambda: S4(H, 4), lambda b, n: torch.randn(b, n, H)),
}


def _raises(fn, pattern):
    with pytest.raises(ShapeError, match=pattern) as info:
        fn()
    print(f"  {type(info.value).__name__}: {info.value}")


@pytest.mark.parametrize("name", LAYERS)
def test_batch_zero_and_length_zero_are_refused(name):
    make, signal = LAYERS[name]
    layer = make()
    _raises(lambda: layer(signal(0, 5)), r"0")
    _raises(lambda: layer(signal(2, 0)), r"time step|length 0|got shape|size 0")


@pytest.mark.parametrize("name", LAYERS)
def test_state_on_another_device_is_refused(name):
    make, signal = LAYERS[name]
    layer = make()
    state = layer.init_state(2)
    if isinstance(state, torch.Tensor):
        moved = state.to("meta")
    else:  # bidirectional/tuple states are not offered by these layers
        pytest.fail(f"{name}: init_state returned {type(state).__name__}")
    _raises(lambda: layer.stream(signal(2, 4), moved), r"meta")


def _dws_operands(batch: int, length: int) -> dict[str, torch.Tensor]:
    return {
        "x": torch.randn(batch, 3, length, dtype=torch.float64),
        "A": torch.complex(-torch.rand(3, 2, dtype=torch.float64), torch.randn(3, 2).double()),
        "E": torch.randn(3, 2, dtype=torch.float64),
    }


def test_functional_entry_points():
    _raises(
        lambda: contractssm.evaluate("dws", _dws_operands(0, 5)), r"'x' has size 0 along index 'b'"
    )
    _raises(lambda: contractssm.evaluate("dws", _dws_operands(2, 0)), r"length 0")
    ops = _dws_operands(2, 5)
    bad = dict(ops, x=ops["x"].long())
    _raises(lambda: contractssm.evaluate("dws", bad), r"floating.*torch.int64")
    _raises(lambda: contractssm.evaluate("dws", dict(ops, x=ops["x"][0])), r"axes|shape")
    _raises(lambda: contractssm.evaluate("dws", dict(ops, E=torch.randn(4, 2).double())), "'c'")
    state = contractssm.zero_state("dws", ops)
    _raises(lambda: contractssm.evaluate("dws", ops, state=state[:1]), r"state has shape")
    _raises(lambda: contractssm.evaluate("dws", ops, state=state.float()), r"dtype")
    _raises(lambda: contractssm.evaluate("dws", ops, state=state.to("meta")), r"meta")
    step_ops = dict(ops, x=ops["x"][..., 0])
    _raises(lambda: contractssm.evaluate_step("dws", step_ops, state.to("meta")), r"meta")
    _raises(lambda: contractssm.evaluate_step("dws", step_ops, state[..., :1]), r"state")


@pytest.mark.parametrize("name", LAYERS)
def test_nan_and_inf_inputs_propagate(name):
    make, signal = LAYERS[name]
    layer = make().eval()
    x = signal(2, 12)
    x.view(-1)[7] = float("nan")
    x.view(-1)[-3] = float("inf")
    with torch.no_grad():
        y = layer(x)
    print(f"  {name}: {(~torch.isfinite(y)).sum().item()} non-finite outputs of {y.numel()}")
    assert not torch.isfinite(y).all()
