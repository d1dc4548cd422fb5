"""Train a mixed-mode CentaurusNetwork on scikit-learn's handwritten digits, read as sequences.

Each 8x8 image is scanned row by row into a 64-step, 1-channel sequence; the network stacks
Centaurus ``SSMLayer``s (one mode per layer), pools by 2 after the first two layers and
classifies from the time-averaged features.

Run:
    python examples/train_digits.py
    python examples/train_digits.py --epochs 20 --channels 32 64 64 --modes full neck s5
"""

from __future__ import annotations

import argparse
import time

import torch

from contractssm.demo import load_digit_sequences, make_network, stream_network, train_digits


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32])
    parser.add_argument("--modes", nargs="+", default=["full", "neck", "s5"])
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--train-subset", type=int, default=None, help="train on the first N sequences only"
    )
    args = parser.parse_args(argv)
    if len(args.channels) != len(args.modes):
        parser.error(f"give one mode per layer: {args.channels} channels, {args.modes} modes")

    torch.manual_seed(args.seed)
    data = load_digit_sequences(args.seed)
    net = make_network(args.channels, args.modes)
    print(net)
    print(f"{sum(p.numel() for p in net.parameters())} parameters", flush=True)
    start = time.perf_counter()
    history = train_digits(
        net,
        data,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        train_subset=args.train_subset,
    )
    acc = history["accuracy"][-1]
    seconds = time.perf_counter() - start
    print(f"test accuracy {acc:.1%} after {args.epochs} epochs ({seconds:.0f} s)")
    stream = stream_network(net, data[2])
    print(f"streamed (chunks of 16) vs one-shot features: max error {stream['max_error']:.1e}")
    return acc


if __name__ == "__main__":
    main()
