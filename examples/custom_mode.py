"""Declare a custom grouped mode, print its plan, and train it briefly on a synthetic task.

The mode splits the channels into ``g`` groups; each group has its own ``s`` states, its own
input map ``B`` and output map ``C`` (an S5 per group), plus a per-channel skip term:

    y[b,g,d,l] = C[g,d,s] * ssm A[g,s;l] * B[g,s,c] * signal x[b,g,c,l] + D[g,d] * x[b,g,d,l]

The task: predict a delayed, smoothed copy of the input (a linear time-invariant target that
an SSM can fit exactly), so the loss falls quickly.

Run:
    python examples/custom_mode.py
    python examples/custom_mode.py --steps 200 --length 256
"""

from __future__ import annotations

import argparse

import torch

import contractssm
from contractssm.layers import DeclaredSSM

DECLARATION = (
    "y[b,g,d,l] = C[g,d,s] * ssm A[g,s;l] * B[g,s,c] * signal x[b,g,c,l] + D[g,d] * x[b,g,d,l]"
)


def target(x: torch.Tensor, delay: int = 3) -> torch.Tensor:
    """A delayed exponential moving average of ``x`` along time (the last axis)."""
    out = torch.zeros_like(x)
    acc = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1]):
        acc = 0.8 * acc + 0.2 * x[..., t]
        out[..., t] = acc
    return torch.nn.functional.pad(out, (delay, 0))[..., : x.shape[-1]]


def main(argv: list[str] | None = None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--groups", type=int, default=2)
    parser.add_argument("--channels", type=int, default=4, help="channels per group")
    parser.add_argument("--states", type=int, default=8, help="states per group")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    contractssm.register_mode("grouped_s5", DECLARATION, overwrite=True)
    g, c, s, b = args.groups, args.channels, args.states, 8
    sizes = {"b": b, "g": g, "c": c, "d": c, "s": s, "l": args.length}
    print(contractssm.plan("grouped_s5", sizes, requires_grad=True), flush=True)

    layer = DeclaredSSM("grouped_s5", {"g": g, "c": c, "d": c, "s": s})
    opt = torch.optim.Adam(layer.parameters(), lr=args.lr)
    losses = []
    for step in range(args.steps):
        x = torch.randn(b, g, c, args.length)
        loss = torch.nn.functional.mse_loss(layer(x), target(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:>4}  loss {loss.item():.4f}", flush=True)
    print(f"loss fell from {losses[0]:.4f} to {losses[-1]:.4f}")
    return losses


if __name__ == "__main__":
    main()
