"""A small Centaurus network: stacked ``SSMLayer``s, optional pooling, optional classifier head.

Like the public reference's classifier and its README's ``MiniCentaur``: layer ``i`` is
``SSMLayer(num_states, channels[i-1], channels[i], state_blocks, mode=modes[i], ...)``, followed
by ``AvgPool1d(downsample[i])`` when that factor is above 1; the head (when ``num_classes`` is
given) is the mean over time and a ``Linear``.

Streaming: ``set_run_mode('inference')`` puts every ``SSMLayer`` in stateful mode, so the
backbone (:meth:`CentaurusNetwork.features`) can be fed chunk by chunk; in ``eval()`` mode the
concatenated chunk outputs equal the one-shot output provided every chunk length is a multiple
of the product of all pooling factors (a pooling window must not straddle two chunks). The
classifier head averages over the time axis of each call, so only the backbone streams.
``reset_states()`` zeroes every layer's state.

Under ``torch.compile(fullgraph=True)`` planning cannot be traced: run the network once
eagerly at each input shape (with the same grad mode) or call :meth:`CentaurusNetwork.prepare`.

Example:
    >>> import torch
    >>> net = CentaurusNetwork(1, [4, 8], ["full", "s5"], num_states=4, state_blocks=2,
    ...                        num_classes=3, downsample=[2, 1])
    >>> net(torch.randn(5, 1, 64)).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from contractssm.errors import ShapeError, SpecError
from contractssm.layers.centaurus import SSMLayer

Tensor = torch.Tensor


class CentaurusNetwork(nn.Module):
    """Stacked Centaurus ``SSMLayer``s with per-layer modes (see the module doc).

    Args:
        in_channels: channels of the (B, C, L) input.
        channels: output channels of each layer.
        modes: the mode of each layer (``'dws'``, ``'s5'``, ``'neck'``, ``'full'``, aliases).
        num_states: states per block of every layer.
        state_blocks: blocks of the ``s5`` and ``neck`` layers.
        num_classes: ``None`` for no head (the network returns the backbone's (B, D, L')).
        downsample: average-pooling factor after each layer (``None`` or 1: no pooling).
        use_activations: norm/postact/dropout after every layer.
        norm: the layers' norm.
        postact: the layers' post-activation.
        dropout: the layers' dropout probability.
        dropout_dim: the layers' dropout kind.
        **planner_options: passed to every ``SSMLayer``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        modes: Sequence[str],
        num_states: int = 16,
        state_blocks: int = 4,
        num_classes: int | None = None,
        downsample: Sequence[int | None] | None = None,
        use_activations: bool = True,
        norm: str | None = "batch",
        postact: str | None = "relu",
        dropout: float | None = None,
        dropout_dim: int = 1,
        **planner_options,
    ) -> None:
        super().__init__()
        channels, modes = list(channels), list(modes)
        if not channels or len(modes) != len(channels):
            raise SpecError(
                f"give one mode per layer: {len(channels)} channel sizes but {len(modes)} modes"
            )
        factors = [1] * len(channels) if downsample is None else [d or 1 for d in downsample]
        if len(factors) != len(channels) or any(not isinstance(f, int) or f < 1 for f in factors):
            raise SpecError(
                f"downsample must give a positive int (or None) per layer, got {downsample!r}"
            )
        self.in_channels = in_channels
        self.channels = channels
        self.modes = modes
        self.downsample = factors
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for c_in, c_out, mode, factor in zip(
            [in_channels, *channels[:-1]], channels, modes, factors, strict=True
        ):
            layers.append(
                SSMLayer(
                    num_states,
                    c_in,
                    c_out,
                    state_blocks,
                    mode=mode,
                    norm=norm,
                    postact=postact,
                    dropout=dropout,
                    dropout_dim=dropout_dim,
                    use_activations=use_activations,
                    **planner_options,
                )
            )
            if factor > 1:
                layers.append(nn.AvgPool1d(factor))
        self.backbone = nn.Sequential(*layers)
        self.classifier = None if num_classes is None else nn.Linear(channels[-1], num_classes)

    @property
    def ssm_layers(self) -> list[SSMLayer]:
        """The ``SSMLayer``s, input first."""
        return [m for m in self.backbone if isinstance(m, SSMLayer)]

    @property
    def total_downsample(self) -> int:
        """The product of the pooling factors (chunk lengths must be multiples of it)."""
        out = 1
        for f in self.downsample:
            out *= f
        return out

    def features(self, x: Tensor) -> Tensor:
        """The backbone: (B, C, L) -> (B, channels[-1], L / total_downsample)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, num_classes), or the backbone's output when there is no head."""
        y = self.features(x)
        if self.classifier is None:
            return y
        return self.classifier(y.mean(dim=-1))

    def set_run_mode(self, run_mode: str = "training") -> None:
        """Set every ``SSMLayer``'s run mode (``'training'`` or ``'inference'``)."""
        for layer in self.ssm_layers:
            layer.set_run_mode(run_mode)

    def reset_states(self) -> None:
        """Zero every ``SSMLayer``'s carried state."""
        for layer in self.ssm_layers:
            layer.reset_state()

    def prepare(self, input_shape: tuple[int, int, int], *, dtype=torch.float32, device="cpu"):
        """Plan every layer for an input of ``input_shape`` (B, C, L), before ``torch.compile``."""
        b, c, length = (int(n) for n in input_shape)
        if c != self.in_channels:
            raise ShapeError(
                f"input_shape must be (B, C, L) with C = in_channels = {self.in_channels}, "
                f"got {tuple(input_shape)}"
            )
        for module in self.backbone:
            if isinstance(module, SSMLayer):
                module.prepare((b, c, length), dtype=dtype, device=device)
                c = module.out_channels
            else:
                length //= module.kernel_size[0]
