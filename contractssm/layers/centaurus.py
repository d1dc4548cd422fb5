"""Centaurus ``SSMLayer`` (arXiv 2501.13230), checkpoint-compatible with the public reference.

SPEC.md section 3. Input and output are laid out (B, C, L) like ``nn.Conv1d``. The parameters
(``A`` with a trailing axis of 2, ``log_dt``, ``B``, ``C``, ``E``) and the ``mixer`` have the
reference implementation's names, shapes and inits, so its ``state_dict`` loads unchanged. The
layer computes the *effective* operands of the built-in declaration (``contractssm.modes``) from
its parameters and runs the planner's generated executors:

    A_c = -softplus(A[..., 0]) + i A[..., 1],   dt = exp(log_dt),   Lambda = dt * A_c

with ``dt`` folded into ``E`` (``dws``: ``E[c,n] dt[c,n]``; ``full``: ``E[d,c,n] dt[d,n]``) or
into ``B`` (``s5``: ``dt[s] B[s,c]``; ``neck``: ``dt[n] B[n,c]``).

Streaming (the reference's behaviour): after ``set_run_mode('inference')`` each call continues
from the state left by the previous call, so a sequence may be fed chunk by chunk (any chunk
lengths) and the concatenated outputs equal the one-shot output (in ``eval()`` mode: a
``BatchNorm`` in training mode normalises each chunk with its own statistics); ``reset_state()``
zeroes the state and ``set_run_mode('training')`` returns to stateless calls. The state is kept
as a non-persistent buffer (``layer.state``), so checkpoints are the same in both run modes. It
is not detached between calls (as in the reference): stream under ``torch.no_grad()`` or call
``reset_state()`` to cut the graph.

Under ``torch.compile(fullgraph=True)`` planning cannot be traced: run the layer once eagerly at
each input shape first (with the same grad mode), or call :meth:`SSMLayer.prepare`.

Example:
    >>> import torch
    >>> layer = SSMLayer(16, 4, 8, mode="full")
    >>> layer(torch.randn(2, 4, 100)).shape
    torch.Size([2, 8, 100])
    >>> layer.A.shape, layer.log_dt.shape, layer.E.shape
    (torch.Size([8, 4, 16, 2]), torch.Size([8, 16]), torch.Size([8, 4, 16]))
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from contractssm.errors import ShapeError, SpecError
from contractssm.layers.base import SSMModule
from contractssm.modes import get_graph
from contractssm.planner.plan import Plan

Tensor = torch.Tensor

#: The four Centaurus connectivity modes, and the names the reference also accepts.
MODES = ("dws", "s5", "neck", "full")
MODE_ALIASES = {"pointwise": "s5", "pw": "s5"}
RUN_MODES = ("training", "inference")


def centaurus_mode(mode: str) -> str:
    """The canonical Centaurus mode name (``'pointwise'`` and ``'pw'`` are ``'s5'``).

    Raises:
        SpecError: ``mode`` is not a Centaurus mode.
    """
    name = MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else mode
    if name not in MODES:
        known = ", ".join(repr(m) for m in (*MODES, *MODE_ALIASES))
        raise SpecError(f"unknown Centaurus mode {mode!r} (known: {known})")
    return name


# -- parameters (the reference's names, shapes and inits) ---------------------------------------


def inverse_softplus(y: float) -> float:
    """``softplus^-1(y) = log(exp(y) - 1)``."""
    return math.log(math.expm1(y))


def centaurus_parameters(
    mode: str, num_states: int, in_channels: int, out_channels: int, state_blocks: int
) -> dict[str, Tensor]:
    """The initial parameters of a Centaurus mode, by name, in the reference's order.

    SPEC.md section 3: ``A[..., 0] = softplus^-1(0.5)``, ``A[..., 1] = pi * q`` (q along the
    num_states axis), ``dt = geomspace(1e-3, 1e-1, G)`` over the mode's axis; ``B = 1/sqrt(C)``,
    ``C ~ Normal(0, 2/S)``, ``E`` per mode. Tensors are in the default dtype.

    Example:
        >>> {k: tuple(v.shape) for k, v in centaurus_parameters("neck", 4, 6, 5, 2).items()}
        {'B': (2, 6), 'C': (5, 2), 'E': (2, 4), 'A': (2, 4, 2), 'log_dt': (2,)}
    """
    mode = centaurus_mode(mode)
    N, Cin, D, R = num_states, in_channels, out_channels, state_blocks
    for name, value in (
        ("num_states", N),
        ("in_channels", Cin),
        ("out_channels", D),
        ("state_blocks", R),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{name} must be a positive int, got {value!r}")
    f64 = torch.float64
    a = torch.empty(N, 2, dtype=f64)  # (n, 2)
    a[:, 0] = inverse_softplus(0.5)
    a[:, 1] = math.pi * torch.arange(N, dtype=f64)
    G = {"dws": Cin, "full": D}.get(mode, R)
    log_dt = torch.log(torch.logspace(-3.0, -1.0, G, dtype=f64))  # geomspace(1e-3, 1e-1, G)
    S = R * N
    out: dict[str, Tensor]
    if mode == "dws":
        out = {
            "E": torch.ones(Cin, N, dtype=f64) / math.sqrt(N),
            "A": a.expand(Cin, N, 2),
            "log_dt": log_dt[:, None].expand(Cin, N),
        }
    elif mode == "s5":
        out = {
            "B": torch.ones(S, Cin, dtype=f64) / math.sqrt(Cin),
            "C": torch.randn(D, S, dtype=f64) * math.sqrt(2.0 / S),
            "A": a.repeat(R, 1),  # state s = j * N + q
            "log_dt": log_dt.repeat_interleave(N),
        }
    elif mode == "neck":
        out = {
            "B": torch.ones(R, Cin, dtype=f64) / math.sqrt(Cin),
            "C": torch.randn(D, R, dtype=f64) * math.sqrt(2.0 / S),
            "E": torch.randn(R, N, dtype=f64) * math.sqrt(2.0),
            "A": a.expand(R, N, 2),
            "log_dt": log_dt,
        }
    else:  # full
        out = {
            "E": torch.ones(D, Cin, N, dtype=f64) / math.sqrt(Cin),
            "A": a.expand(D, Cin, N, 2),
            "log_dt": log_dt[:, None].expand(D, N),
        }
    dtype = torch.get_default_dtype()
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


def centaurus_operands(
    mode: str,
    A: Tensor,
    log_dt: Tensor,
    B: Tensor | None = None,
    C: Tensor | None = None,
    E: Tensor | None = None,
) -> dict[str, Tensor]:
    """The effective operands of the built-in declaration of ``mode`` (all but the signal).

    ``A`` of the result is the complex rate ``Lambda = dt * A_c``; ``dt`` is folded into ``E``
    (``dws``, ``full``) or ``B`` (``s5``, ``neck``) as SPEC.md section 3 writes it.
    """
    dt = torch.exp(log_dt)
    re, im = -F.softplus(A[..., 0]), A[..., 1]
    if mode == "dws":  # dt (c, n) like A
        return {"A": torch.complex(dt * re, dt * im), "E": E * dt}
    if mode == "s5":  # dt (s,)
        return {"A": torch.complex(dt * re, dt * im), "B": dt[:, None] * B, "C": C}
    if mode == "neck":  # dt (n,) over blocks, A (n, m)
        dt_nm = dt[:, None]
        return {
            "A": torch.complex(dt_nm * re, dt_nm * im),
            "B": dt[:, None] * B,
            "C": C,
            "E": E,
        }
    # full: dt (d, n) broadcast over c
    dt_dcn = dt[:, None, :]
    return {"A": torch.complex(dt_dcn * re, dt_dcn * im), "E": E * dt_dcn}


# -- the mixer (the reference's activation blocks, same module layout) -------------------------


class LayerNormFeature(nn.LayerNorm):
    """``LayerNorm`` over the channels of a (B, C, L) tensor (the reference's ``layer-feature``)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over channels."""
        return super().forward(x.moveaxis(-1, -2)).moveaxis(-1, -2)


class RmsNormFeature(nn.Module):
    """``RMSNorm`` over the channel axis of a (B, C, L) tensor (the reference's ``rms``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.rms_norm = nn.RMSNorm(features)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over channels."""
        return self.rms_norm(x.moveaxis(-1, -2)).moveaxis(-1, -2)


NORMS = ("batch", "group", "instance", "layer", "layer-feature", "rms", None)
POSTACTS = ("relu", "relu6", "lelu", "sigmoid", "tanh", "gelu", "glu", "silu", None)


def _norm(norm: str, features: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm1d(features)
    if norm == "group":
        return nn.GroupNorm(4, features)
    if norm == "instance":
        return nn.GroupNorm(features, features)
    if norm == "layer":  # the reference's nn.LayerNorm: normalises the last (time) axis
        return nn.LayerNorm(features)
    if norm == "layer-feature":
        return LayerNormFeature(features) if features > 1 else nn.Identity()
    if norm == "rms":
        return RmsNormFeature(features) if features > 1 else nn.Identity()
    raise SpecError(f"unknown norm {norm!r} (known: {', '.join(map(repr, NORMS))})")


def _postact(postact: str) -> nn.Module:
    table = {
        "relu": nn.ReLU,
        "relu6": nn.ReLU6,
        "lelu": lambda: nn.LeakyReLU(0.1),
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": nn.GELU,
        "glu": lambda: nn.GLU(dim=1),
        "silu": nn.SiLU,
    }
    if postact not in table:
        raise SpecError(f"unknown postact {postact!r} (known: {', '.join(map(repr, POSTACTS))})")
    return table[postact]()


def _dropout(p: float, dropout_dim: int, features: int) -> nn.Module:
    table = {0: nn.Dropout, 1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}
    if dropout_dim not in table:
        raise SpecError(f"dropout_dim must be 0, 1, 2 or 3, got {dropout_dim!r}")
    # The reference skips channel dropout on fewer than 16 channels.
    return table[dropout_dim](p) if dropout_dim == 0 or features >= 16 else nn.Identity()


def activations(
    features: int,
    norm: str | None = "batch",
    postact: str | None = "relu",
    dropout: float | None = None,
    dropout_dim: int = 1,
) -> nn.Module:
    """``Sequential(norm, postact, dropout)`` without the parts that are ``None``.

    The reference's ``get_activations(1, ...)``: an ``Identity`` when all three are ``None``.
    """
    if norm is None and postact is None and dropout is None:
        return nn.Identity()
    block = nn.Sequential()
    if norm is not None:
        block.append(_norm(norm, features))
    if postact is not None:
        block.append(_postact(postact))
    if dropout is not None:
        block.append(_dropout(dropout, dropout_dim, features))
    return block


# -- the layer ---------------------------------------------------------------------------------


class SSMLayer(SSMModule):
    """A Centaurus SSM layer: (B, C, L) in, (B, D, L) out, exactly SPEC.md section 3.

    Parameters (``R = state_blocks or 1``, ``N = num_states``, ``S = R * N``):

    ========  ==========================================================================
    ``dws``   ``A (C,N,2)``, ``log_dt (C,N)``, ``E (C,N)``; then ``mixer`` =
              ``Sequential(Sequential(norm(C), postact), Conv1d(C, D, 1), act)``
    ``s5``    ``A (S,2)``, ``log_dt (S,)``, ``B (S,C)``, ``C (D,S)``; ``mixer = act``
    ``neck``  ``A (R,N,2)``, ``log_dt (R,)``, ``B (R,C)``, ``C (D,R)``, ``E (R,N)``
    ``full``  ``A (D,C,N,2)``, ``log_dt (D,N)``, ``E (D,C,N)``
    ========  ==========================================================================

    ``act`` is ``Sequential(norm(D), postact, dropout)`` when ``use_activations`` (the parts
    that are ``None`` left out), else ``Identity``. Absent operands (``B``, ``C``, ``E``) are
    ``None`` attributes, as in the reference.

    Args:
        num_states: states per channel (``dws``), per channel pair (``full``) or per block.
        in_channels: C.
        out_channels: D. For ``dws`` the SSM keeps C channels and the mixer maps them to D.
        state_blocks: R for ``s5`` and ``neck`` (``None`` is 1).
        mode: ``'dws'``, ``'s5'`` (aliases ``'pointwise'``, ``'pw'``), ``'neck'`` or ``'full'``.
        norm: ``'batch'``, ``'group'``, ``'instance'``, ``'layer'``, ``'layer-feature'``,
            ``'rms'`` or ``None``.
        postact: ``'relu'``, ``'relu6'``, ``'lelu'``, ``'sigmoid'``, ``'tanh'``, ``'gelu'``,
            ``'glu'``, ``'silu'`` or ``None``.
        dropout: dropout probability, or ``None``.
        dropout_dim: 0 for ``Dropout``, 1-3 for ``Dropout1d``-``3d`` (skipped under 16 channels).
        use_activations: apply ``act`` after the layer.
        **planner_options: ``objective``, ``autotune``, ``algorithm``, ``memory_limit``,
            ``length_bucket`` (see :class:`~contractssm.layers.base.SSMModule`).

    Example:
        >>> import torch
        >>> layer = SSMLayer(16, 4, 8, state_blocks=4, mode="s5").eval()
        >>> x = torch.randn(2, 4, 64)
        >>> y = layer(x)
        >>> layer.set_run_mode("inference")
        >>> chunks = torch.cat([layer(c) for c in x.split(24, dim=-1)], dim=-1)
        >>> bool(torch.allclose(chunks, y, atol=1e-5))
        True
    """

    def __init__(
        self,
        num_states: int,
        in_channels: int,
        out_channels: int,
        state_blocks: int | None = None,
        mode: str = "s5",
        norm: str | None = "batch",
        postact: str | None = "relu",
        dropout: float | None = None,
        dropout_dim: int = 1,
        use_activations: bool = False,
        **planner_options,
    ) -> None:
        mode = centaurus_mode(mode)
        super().__init__(get_graph(mode), **planner_options)
        self.mode = mode
        self.num_states = num_states
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.state_blocks = 1 if state_blocks is None else state_blocks
        self.norm = norm
        self.postact = postact
        self.dropout = dropout
        self.dropout_dim = dropout_dim
        self.use_activations = use_activations
        self.B = self.C = self.E = None
        params = centaurus_parameters(
            mode, num_states, in_channels, out_channels, self.state_blocks
        )
        for name, value in params.items():
            setattr(self, name, nn.Parameter(value))
        for p in (self.A, self.log_dt):  # the reference's flag for a smaller learning rate
            p.sensitive = True
        self.mixer = self._make_mixer()
        self.register_buffer("state", None, persistent=False)
        self.run_mode = "training"

    def _make_mixer(self) -> nn.Module:
        opts = {"postact": self.postact, "dropout": self.dropout, "dropout_dim": self.dropout_dim}
        act = (
            activations(self.out_channels, self.norm, **opts)
            if self.use_activations
            else nn.Identity()
        )
        if self.mode != "dws":
            return act
        return nn.Sequential(
            activations(self.in_channels, self.norm, **opts),
            nn.Conv1d(self.in_channels, self.out_channels, 1, bias=False),
            act,
        )

    @property
    def ssm_channels(self) -> int:
        """Channels of the SSM output before the mixer (C for ``dws``, D otherwise)."""
        return self.in_channels if self.mode == "dws" else self.out_channels

    def extra_repr(self) -> str:
        """The constructor's sizes and mode."""
        return (
            f"num_states={self.num_states}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, state_blocks={self.state_blocks}, "
            f"mode={self.mode!r}"
        )

    # -- the graph's operands ------------------------------------------------------------------

    def ssm_operands(self) -> dict[str, Tensor]:
        """The effective operands of the mode's declaration: the rate ``A``, ``B``, ``C``, ``E``."""
        return centaurus_operands(self.mode, self.A, self.log_dt, self.B, self.C, self.E)

    # -- input checks --------------------------------------------------------------------------

    def _check_input(self, x: Tensor, *, step: bool = False) -> None:
        layout = "(B, C)" if step else "(B, C, L)"
        rank = 2 if step else 3
        if not isinstance(x, Tensor):
            raise ShapeError(
                f"{type(self).__name__} expects a tensor laid out {layout}, got {type(x).__name__}"
            )
        if x.dim() != rank:
            raise ShapeError(
                f"{type(self).__name__}(mode={self.mode!r}) expects input {layout} with "
                f"{rank} axes, got {x.dim()} axes, shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{type(self).__name__}(mode={self.mode!r}) expects input {layout} with "
                f"C = in_channels = {self.in_channels}, got C = {x.shape[1]} "
                f"(shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise ShapeError(
                f"{type(self).__name__} expects a floating-point input (float32 or float64), "
                f"got {x.dtype}"
            )
        if not step and x.shape[-1] < 1:
            raise ShapeError(
                f"{type(self).__name__} expects at least one time step, got shape "
                f"{tuple(x.shape)} (B, C, L)"
            )

    # -- running -------------------------------------------------------------------------------

    def ssm(self, x: Tensor) -> Tensor:
        """The SSM output before the mixer, kernel mode: (B, C, L) -> (B, D, L) (C for dws)."""
        self._check_input(x)
        return self.ssm_kernel(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, L) -> (B, D, L); stateful across calls in ``'inference'`` run mode."""
        self._check_input(x)
        if self.run_mode == "inference":
            state = self._carried_state(x)
            z, self.state = self.ssm_stream(x, state)
        else:
            z = self.ssm_kernel(x)
        return self.mixer(z)

    def _carried_state(self, x: Tensor) -> Tensor:
        state = self.state
        if state is None:
            return self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if state.shape[0] != x.shape[0]:
            raise ShapeError(
                f"the carried state holds batch size {state.shape[0]} but the input has "
                f"{x.shape[0]} (shape {tuple(x.shape)}); call reset_state() between sequences"
            )
        return state.to(device=x.device, dtype=x.dtype)

    def set_run_mode(self, run_mode: str = "training") -> None:
        """``'inference'``: calls continue from the carried state; ``'training'``: stateless."""
        if run_mode not in RUN_MODES:
            raise SpecError(f"run_mode must be 'training' or 'inference', got {run_mode!r}")
        self.run_mode = run_mode

    def reset_state(self) -> None:
        """Zero the carried state (the next inference call starts a new sequence)."""
        self.state = None

    # -- the streaming API ---------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None) -> Tensor:
        """A zero state: real, shaped ``(B, <state indices>, 2)`` (see SPEC.md section 3)."""
        return torch.zeros(
            self.ssm_state_shape({"b": int(batch_size)}),
            device=device if device is not None else self.A.device,
            dtype=dtype if dtype is not None else self.A.dtype,
        )

    def stream(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """A chunk (B, C, L) of any length from ``state``; returns ``(y, new_state)``.

        ``y`` is the layer output (mixer applied; chunking is exact in ``eval()`` mode).
        """
        self._check_input(x)
        z, state = self.ssm_stream(x, state)
        return self.mixer(z), state

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One time step: ``x_t`` (B, C) -> ``(y_t (B, D), new_state)`` (mixer applied)."""
        self._check_input(x_t, step=True)
        z, state = self.ssm_step(x_t, state)
        return self.mixer(z.unsqueeze(-1)).squeeze(-1), state

    def plan(self, input_shape: tuple[int, int, int], *, training: bool | None = None) -> Plan:
        """The plan used for an input of ``input_shape`` (B, C, L), in the parameters' dtype."""
        shape = tuple(int(n) for n in input_shape)
        if len(shape) != 3 or shape[1] != self.in_channels:
            raise ShapeError(
                f"input_shape must be (B, C, L) with C = in_channels = {self.in_channels}, "
                f"got {shape}"
            )
        return self.plan_for(shape, dtype=self.A.dtype, device=self.A.device, training=training)
