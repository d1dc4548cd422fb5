"""``contractssm demo``: plan every mode, check the executors, train, stream and draw.

The demo runs in well under a minute on a 2-core CPU and walks through what the library does:

1. plans every built-in mode (S4 aside) at benchmark sizes and prints a one-line summary each;
2. checks kernel mode, chunked streaming and step mode against each other (float64);
3. trains a small :class:`~contractssm.layers.network.CentaurusNetwork` mixing modes
   (``full``, ``neck``, ``s5``) on scikit-learn's handwritten digits, read as 64-step sequences
   (each 8x8 image scanned row by row), and prints the test accuracy per epoch;
4. streams the trained network chunk by chunk and compares with the one-shot output;
5. writes a PNG with the training curve and a plan's contraction graph.

Example:
    >>> from contractssm.demo import run_demo
    >>> result = run_demo("demo-out", quick=True)  # doctest: +SKIP
    >>> result["accuracy"] > 0.5  # doctest: +SKIP
    True
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import torch

from contractssm.errors import ContractSSMError

#: Built-in modes the demo plans and checks (S4 has no diagonal declaration of its own).
DEMO_MODES = ("dws", "s5", "neck", "full", "s4d", "s5_mimo", "lru")
#: Modes of the demo network's layers, input first.
NETWORK_MODES = ("full", "neck", "s5")
#: Small sizes (time excluded) for the kernel / stream / step check.
CHECK_SIZES = {
    "dws": {"b": 2, "c": 3, "n": 4},
    "s5": {"b": 2, "c": 3, "d": 2, "s": 4},
    "neck": {"b": 2, "c": 3, "d": 2, "n": 2, "m": 3},
    "full": {"b": 2, "c": 3, "d": 2, "n": 2},
    "s4d": {"b": 2, "k": 2, "h": 3, "n": 2},
    "s5_mimo": {"b": 2, "h": 3, "g": 3, "p": 4},
    "lru": {"b": 2, "h": 3, "g": 3, "n": 4},
}
CHECK_LENGTH = 300
CHECK_CHUNK = 100
STREAM_CHUNK = 16


def default_sizes(mode: str, b: int = 8, length: int = 1024) -> dict[str, int]:
    """Benchmark sizes of a mode: 64 channels and 16 states (Centaurus), d_model 64 (models).

    Args:
        mode: a name in :data:`DEMO_MODES`.
        b: batch size.
        length: sequence length.

    Returns:
        A size for every index of the mode's declaration.
    """
    c, n, h = 64, 16, 64
    table = {
        "dws": {"b": b, "c": c, "n": n, "l": length},
        "s5": {"b": b, "c": c, "d": c, "s": 4 * n, "l": length},
        "neck": {"b": b, "c": c, "d": c, "n": 4, "m": n, "l": length},
        "full": {"b": b, "c": c, "d": c, "n": n, "l": length},
        "s4d": {"b": b, "k": 1, "h": h, "n": 32, "l": length},
        "s5_mimo": {"b": b, "h": h, "g": h, "p": 64, "l": length},
        "lru": {"b": b, "h": h, "g": h, "n": 64, "l": length},
    }
    return table[mode]


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Runs the body with ``torch.set_num_threads(n)`` (``None``: unchanged), then restores it.

    The demo's tensors are tiny: one thread is as fast as two on an idle 2-core machine and
    several times faster when other processes compete for the cores.
    """
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# --- 1. plans ---------------------------------------------------------------------------------


def plan_modes(say: Callable[[str], None] = _say) -> dict:
    """Plans every demo mode at its default sizes (forward + backward) and prints a summary.

    Returns:
        The plans by mode name.
    """
    from contractssm.planner.api import plan

    plans = {}
    for mode in DEMO_MODES:
        sizes = default_sizes(mode)
        start = time.perf_counter()
        p = plan(mode, sizes, requires_grad=True)
        took = (time.perf_counter() - start) * 1e3
        plans[mode] = p
        size_text = ",".join(f"{k}={v}" for k, v in sizes.items())
        say(
            f"  {mode:<8} {size_text:<28} {p.predicted_seconds * 1e3:8.2f} ms "
            f"{p.peak_bytes / 2**20:8.2f} MiB  {p.strategy.describe()}  "
            f"({p.n_candidates} candidates, planned in {took:.0f} ms)"
        )
    return plans


# --- 2. kernel / stream / step ---------------------------------------------------------------


def _random_operands(graph, sizes: dict[str, int], gen: torch.Generator) -> dict:
    """Float64 operands: real signal, stable complex rate, real or complex weights."""
    ops = {}
    for op in graph.operands:
        shape = [sizes[i] for i in op.indices]
        if op is graph.recurrence:
            re = -(0.05 + 0.6 * torch.rand(shape, generator=gen, dtype=torch.float64))
            im = 2.0 * torch.randn(shape, generator=gen, dtype=torch.float64)
            ops[op.name] = torch.complex(re, im)
        elif op.is_complex:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=torch.complex128)
        else:
            ops[op.name] = torch.randn(shape, generator=gen, dtype=torch.float64)
    return ops


def check_executors(seed: int = 0, say: Callable[[str], None] = _say) -> dict[str, dict]:
    """Runs each mode in kernel, streaming (chunks of 100) and step mode and compares them.

    Returns:
        For each mode, the max absolute errors ``{"stream": ..., "step": ...}`` against kernel
        mode, relative to the output's largest magnitude.
    """
    from contractssm import evaluate, evaluate_step, zero_state
    from contractssm.modes import get_graph

    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for mode in DEMO_MODES:
        graph = get_graph(mode)
        sizes = {**CHECK_SIZES[mode], graph.time: CHECK_LENGTH}
        ops = _random_operands(graph, sizes, gen)
        x_name = graph.signal.name
        x = ops[x_name]
        x_axis = graph.signal.indices.index(graph.time)
        y_axis = list(graph.output_indices).index(graph.time)
        y = evaluate(mode, ops)
        scale = y.abs().max().item() or 1.0

        state = zero_state(mode, ops)
        chunks = []
        for start in range(0, CHECK_LENGTH, CHECK_CHUNK):
            part = {**ops, x_name: x.narrow(x_axis, start, min(CHECK_CHUNK, CHECK_LENGTH - start))}
            y_part, state = evaluate(mode, part, state=state)
            chunks.append(y_part)
        stream_err = (torch.cat(chunks, y_axis) - y).abs().max().item() / scale

        state = zero_state(mode, ops)
        steps = []
        for t in range(CHECK_LENGTH):
            y_t, state = evaluate_step(mode, {**ops, x_name: x.select(x_axis, t)}, state)
            steps.append(y_t)
        step_err = (torch.stack(steps, y_axis) - y).abs().max().item() / scale

        errors[mode] = {"stream": stream_err, "step": step_err}
        say(
            f"  {mode:<8} l={CHECK_LENGTH}: stream (chunks of {CHECK_CHUNK}) vs kernel "
            f"{stream_err:.1e}, step vs kernel {step_err:.1e}"
        )
    return errors


# --- 3. digits --------------------------------------------------------------------------------


def load_digit_sequences(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's 8x8 handwritten digits as (N, 1, 64) sequences, scanned row by row.

    Args:
        seed: seed of the stratified train/test split.
        test_fraction: share of the 1797 images held out for testing.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 sequences standardised with the
        training set's statistics, and int64 labels.

    Raises:
        ContractSSMError: scikit-learn is not installed.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ContractSSMError(
            "the digits data set comes with scikit-learn: pip install scikit-learn"
        ) from exc
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 64)
    y = torch.tensor(digits.target, dtype=torch.int64)
    train_idx, test_idx = train_test_split(
        list(range(len(y))), test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    x_train, x_test = x[train_idx], x[test_idx]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[train_idx], (x_test - mean) / std, y[test_idx]


def make_network(
    channels: list[int] | None = None,
    modes: list[str] | None = None,
    num_states: int = 8,
    state_blocks: int = 4,
):
    """The demo's classifier: ``full``, ``neck`` and ``s5`` layers, pooling by 2 twice.

    Args:
        channels: output channels per layer (default ``[16, 32, 32]``).
        modes: mode per layer (default :data:`NETWORK_MODES`).
        num_states: states per block.
        state_blocks: blocks of the ``s5`` and ``neck`` layers.

    Returns:
        A :class:`~contractssm.layers.network.CentaurusNetwork` with a 10-class head.
    """
    from contractssm.layers.network import CentaurusNetwork

    channels = [16, 32, 32] if channels is None else list(channels)
    modes = list(NETWORK_MODES) if modes is None else list(modes)
    downsample = [2 if i < 2 else 1 for i in range(len(modes))]
    return CentaurusNetwork(
        1,
        channels,
        modes,
        num_states=num_states,
        state_blocks=state_blocks,
        num_classes=10,
        downsample=downsample,
    )


def accuracy(net, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` the network classifies as ``y`` (eval mode, no grad)."""
    net.eval()
    with torch.no_grad():
        return (net(x).argmax(-1) == y).float().mean().item()


def train_digits(
    net,
    data,
    *,
    epochs: int = 12,
    lr: float = 1e-2,
    batch_size: int = 32,
    seed: int = 0,
    train_subset: int | None = None,
    num_threads: int | None = 1,
    say: Callable[[str], None] = _say,
) -> dict[str, list[float]]:
    """Trains ``net`` with Adam (cosine learning-rate decay) and cross-entropy.

    Args:
        net: the classifier.
        data: ``(x_train, y_train, x_test, y_test)`` from :func:`load_digit_sequences`.
        epochs: passes over the training set.
        lr: Adam's initial learning rate.
        batch_size: training batch size (the last partial batch is dropped).
        seed: seed of the batch shuffling.
        train_subset: train on only this many training sequences.
        num_threads: torch threads while training (``None``: leave torch's setting).
        say: where progress lines go.

    Returns:
        ``{"loss": [...], "accuracy": [...], "seconds": [...]}`` per epoch (mean training
        loss, test accuracy, elapsed seconds).
    """
    x_train, y_train = data[0], data[1]
    if train_subset is not None:
        x_train, y_train = x_train[:train_subset], y_train[:train_subset]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, len(y_train) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "seconds": []}
    with torch_threads(num_threads):
        _train_epochs(
            net, opt, sched, data[2:], x_train, y_train, gen, epochs, batch_size, history, say
        )
    return history


def _train_epochs(net, opt, sched, test, x_train, y_train, gen, epochs, batch_size, history, say):
    """The epochs of :func:`train_digits`, appending to ``history``."""
    steps_per_epoch = max(1, len(y_train) // batch_size)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y_train), generator=gen)
        total = 0.0
        for k in range(steps_per_epoch):
            idx = order[k * batch_size : (k + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = accuracy(net, *test)
        history["loss"].append(total / steps_per_epoch)
        history["accuracy"].append(acc)
        history["seconds"].append(time.perf_counter() - start)
        say(
            f"  epoch {epoch + 1:>2}/{epochs}  loss {history['loss'][-1]:.3f}  "
            f"test accuracy {acc:6.1%}  ({history['seconds'][-1]:.1f} s)"
        )


# --- 4. streaming -----------------------------------------------------------------------------


def stream_network(net, x: torch.Tensor, chunk: int = STREAM_CHUNK) -> dict[str, float]:
    """Feeds ``x`` to the backbone chunk by chunk (inference mode) and compares with one shot.

    Args:
        net: a trained :class:`~contractssm.layers.network.CentaurusNetwork`.
        x: (B, C, L) inputs; ``chunk`` must be a multiple of ``net.total_downsample``.
        chunk: chunk length.

    Returns:
        ``{"max_error": ..., "scale": ..., "same_predictions": ...}``: the largest absolute
        difference of the backbone features, their largest magnitude, and the share of inputs
        whose streamed class equals the one-shot class.
    """
    net.eval()
    with torch.no_grad():
        net.set_run_mode("training")
        one_shot = net.features(x)
        net.set_run_mode("inference")
        net.reset_states()
        try:
            parts = [net.features(x[..., s : s + chunk]) for s in range(0, x.shape[-1], chunk)]
        finally:
            net.reset_states()
            net.set_run_mode("training")
        streamed = torch.cat(parts, dim=-1)
        same = 1.0
        if net.classifier is not None:
            a = net.classifier(streamed.mean(-1)).argmax(-1)
            b = net.classifier(one_shot.mean(-1)).argmax(-1)
            same = (a == b).float().mean().item()
    return {
        "max_error": (streamed - one_shot).abs().max().item(),
        "scale": one_shot.abs().max().item(),
        "same_predictions": same,
    }


# --- 5. picture -------------------------------------------------------------------------------


def save_demo_png(history: dict[str, list[float]], plan, path: str) -> str:
    """Writes the training curve (loss and accuracy) beside a plan's contraction graph."""
    from contractssm.viz import plan_figure, pyplot

    plt = pyplot()
    fig = plt.figure(figsize=(16, 5))
    grid = fig.add_gridspec(1, 3)
    ax_loss = fig.add_subplot(grid[0, 0])
    epochs = list(range(1, len(history["loss"]) + 1))
    ax_loss.plot(epochs, history["loss"], "o-", color="tab:red", label="training loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss", color="tab:red")
    ax_acc = ax_loss.twinx()
    ax_acc.plot(epochs, history["accuracy"], "s-", color="tab:blue", label="test accuracy")
    ax_acc.set_ylabel("test accuracy", color="tab:blue")
    ax_acc.set_ylim(0.0, 1.0)
    ax_acc.axhline(0.1, color="0.6", linestyle=":", linewidth=1)
    ax_loss.set_title("digits: CentaurusNetwork " + "/".join(NETWORK_MODES), fontsize=9)
    plan_figure(plan, ax=fig.add_subplot(grid[0, 1:]))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the demo ---------------------------------------------------------------------------------


def run_demo(
    out_dir: str | os.PathLike = ".",
    epochs: int | None = None,
    seed: int = 0,
    quick: bool = False,
    say: Callable[[str], None] = _say,
) -> dict:
    """Runs the whole demo (see the module doc) and writes ``contractssm-demo.png``.

    Args:
        out_dir: folder for the PNG (created if missing).
        epochs: training epochs (default 12, or 3 with ``quick``).
        seed: seed of the data split, the initialisation and the shuffling.
        quick: train for 3 epochs only (for tests; accuracy is lower).
        say: where progress lines go (default: print and flush).

    Returns:
        A summary: ``plans`` (mode -> predicted ms, peak MiB, strategy), ``equivalence``
        (mode -> stream and step errors), ``history``, ``accuracy`` (final test accuracy),
        ``streaming`` (see :func:`stream_network`), ``png`` (path) and ``seconds``.
    """
    start = time.perf_counter()
    epochs = (3 if quick else 12) if epochs is None else int(epochs)
    if epochs < 1:
        raise ContractSSMError(f"epochs must be at least 1 (--epochs), got {epochs}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        return _demo(out_dir, epochs, seed, say, start)
    finally:
        torch.set_num_threads(threads)


def _demo(out_dir: str, epochs: int, seed: int, say: Callable[[str], None], start: float) -> dict:
    """The steps of :func:`run_demo` (see there)."""
    torch.manual_seed(seed)

    say("[1/5] planning every built-in mode at benchmark sizes (float32, forward+backward)")
    say(f"  {'mode':<8} {'sizes':<28} {'predicted':>11} {'peak':>12}  chosen strategy")
    plans = plan_modes(say)
    torch.set_num_threads(1)  # the rest is tiny tensors: see torch_threads

    say("[2/5] kernel vs streaming vs step mode on random float64 inputs (max relative error)")
    with torch.no_grad():
        equivalence = check_executors(seed, say)

    say("[3/5] training a CentaurusNetwork (full -> neck -> s5) on scikit-learn's digits")
    data = load_digit_sequences(seed)
    torch.manual_seed(seed)
    net = make_network()
    n_params = sum(p.numel() for p in net.parameters())
    say(
        f"  {len(data[1])} training / {len(data[3])} test sequences of length 64 (8x8 images "
        f"scanned row by row), 10 classes; {n_params} parameters; chance is 10%"
    )
    history = train_digits(net, data, epochs=epochs, seed=seed, say=say)
    acc = history["accuracy"][-1]
    say(f"  final test accuracy: {acc:.1%} (chance 10%)")

    say(f"[4/5] streaming the trained network in chunks of {STREAM_CHUNK} (inference mode)")
    streaming = stream_network(net, data[2])
    say(
        f"  streamed vs one-shot features: max error {streaming['max_error']:.1e} "
        f"(features up to {streaming['scale']:.1f}); same predictions for "
        f"{streaming['same_predictions']:.0%} of the test set"
    )

    say("[5/5] drawing the training curve and the plan of the network's neck layer (training)")
    neck = next((m for m in net.ssm_layers if m.mode == "neck"), net.ssm_layers[-1])
    neck_plan = neck.plan((32, neck.in_channels, 32), training=True)
    png = save_demo_png(history, neck_plan, os.path.join(out_dir, "contractssm-demo.png"))
    seconds = time.perf_counter() - start
    say(f"  wrote {os.path.abspath(png)}")
    say(
        f"done in {seconds:.0f} s: test accuracy {acc:.1%}, streaming error "
        f"{streaming['max_error']:.1e}"
    )
    return {
        "plans": {
            mode: {
                "predicted_ms": p.predicted_seconds * 1e3,
                "peak_mib": p.peak_bytes / 2**20,
                "strategy": p.strategy.describe(),
            }
            for mode, p in plans.items()
        },
        "equivalence": equivalence,
        "history": history,
        "accuracy": acc,
        "streaming": streaming,
        "png": png,
        "seconds": seconds,
    }
