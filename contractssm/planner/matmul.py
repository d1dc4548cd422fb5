"""Two-operand contractions as one ``torch.matmul`` on views: the layout decision.

The code generator emits the expression; the cost model asks whether one exists (a contraction
without one goes through ``torch.einsum``, whose permute copies it prices). Pure string work:
no torch here.

``torch.einsum`` folds indices by permuting and reshaping, which copies whenever the requested
layout differs from memory order; ``torch.matmul`` broadcasts batch axes and reads transposed
operands without copies. When both operands' axes fall into blocks that a batched matmul can
read as they lie (batch axes first, then the kept and contracted blocks in either order), the
generated line is a ``matmul`` of reshaped views; otherwise the generator keeps the einsum.

Example:
    >>> matmul_expression("adT,ed->aeT", "x", "w", {"a": 8, "d": 64, "T": 1024, "e": 4})
    'rt.bmm(w.reshape(1, 4, 64), x)'
"""

from __future__ import annotations

import functools
import math

#: A partially broadcast operand may be materialised expanded while it stays this many times
#: smaller than the other operand.
SMALL_EXPANSION = 4

#: A batched CPU matmul whose result has fewer columns than this reads its left operand far
#: slower than the transposed product does (MKL through torch 2.13, 2-core EPYC, float32):
#: (4, 256, 256) @ (4, 256, 1) 123 us, (4, 1, 256) @ (4, 256, 256) 13 us; 8 columns 166 vs 40
#: us; from 16 columns both take the same time. Many small ones too: (256, 256, 2) @ (256, 2,
#: 1) 238 vs 46 us. A narrow result is written transposed, where the batch times rows times
#: contracted length reach :data:`NARROW_MIN_ELEMENTS` (below, either way takes a few
#: microseconds and the transposed one can be slower: (16, 16, 16) @ (16, 16, 1) 2.4 vs 3.2 us)
#: and the product is batched or has more than one column (one matrix-vector product is fast
#: either way: 4.7 vs 5.7 us at 256 x 256).
NARROW_COLUMNS = 16
NARROW_MIN_ELEMENTS = 1 << 14

#: A contraction summing at most this many terms per output, one operand holding every axis
#: of the other (a weighted sum over a short axis), runs as a broadcast product and a sum
#: (:func:`is_weighted_sum`).
WEIGHTED_SUM_TERMS = 16

#: A mixed real part sums its ``(Re, Im)`` axis against the real operand padded with zeros
#: where that operand has at most 1/PADDED_MAX_SHARE of the complex one's elements (a small copy).
PADDED_MAX_SHARE = 4

#: How a complex operand enters a real contraction: ``view`` is ``torch.view_as_real`` (its
#: ``(Re, Im)`` as a last axis, no copy), ``stacked`` is ``(Re, -Im)`` stacked (a copy); a
#: real one ``padded`` is ``(x, 0)`` stacked (a copy).
REAL_AXIS = "Z"


def _layout(axes: str, batch: list[str], first: list[str], second: list[str], sizes) -> list | None:
    """How ``axes`` reads as (batch..., ``first``, ``second``) without a copy, or ``None``.

    Returns the permutation of ``axes`` into that order (identity when it already lies so).
    The two blocks must each be adjacent axes in memory (a reshape merges them as a view);
    the batch axes may lie anywhere, since a batched matmul reads any batch stride, but the
    ones wider than 1 must lie in batch order and adjacent, so flattening them stays a view.
    """
    if [x for x in axes if x not in batch] != first + second:
        return None
    for block in (first, second):
        if block and "".join(block) not in axes:
            return None
    wide = [x for x in axes if x in batch and sizes[x] > 1]
    if wide != [x for x in batch if x in wide] or (wide and "".join(wide) not in axes):
        return None
    return [axes.index(x) for x in [*(x for x in batch if x in axes), *first, *second]]


def _view(
    name: str,
    axes: str,
    perm: list[int],
    batch: list[str],
    rows: list[str],
    cols: list[str],
    sizes: dict[str, int],
    transposed: bool,
) -> str:
    """``name`` permuted by ``perm``, reshaped to (batch..., rows, cols) (1 for absent batch)."""
    shape = [sizes[a] if a in axes else 1 for a in batch]
    inner = [math.prod(sizes[a] for a in cols), math.prod(sizes[a] for a in rows)]
    if not transposed:
        inner.reverse()
    if perm != sorted(perm):
        name = f"{name}.permute({', '.join(map(str, perm))})"
    elif [sizes[a] for a in axes] == shape + inner:
        # Already that shape: a reshape would be one more dispatched op per call (a few
        # microseconds each, a tenth of a batch-1 stream chunk's time in all).
        return f"{name}.transpose(-1, -2)" if transposed else name
    expr = f"{name}.reshape({', '.join(map(str, shape + inner))})"
    return f"{expr}.transpose(-1, -2)" if transposed else expr


def _batch_orders(ia: str, ib: str, out: str):
    """Every batch axis list worth trying.

    The shared output axes always are batch; each choice of one-sided output axes to
    broadcast joins them, ordered as in the output or as in either operand.
    """
    shared = [x for x in out if x in ia and x in ib]
    optional = [x for x in out if x not in shared]
    seen = set()
    for mask in range(1 << len(optional)):
        chosen = set(shared) | {x for i, x in enumerate(optional) if mask >> i & 1}
        for order in (out, ia + out, ib + out):
            batch = tuple(dict.fromkeys(x for x in order if x in chosen))
            if batch not in seen:
                seen.add(batch)
                yield list(batch)


def matmul_expression(
    equation: str,
    left: str,
    right: str,
    sizes: dict[str, int],
    *,
    keep_last: bool = False,
) -> str | None:
    """A ``torch.matmul`` expression equal to ``einsum(equation, left, right)``, or ``None``.

    ``None`` when some index is summed inside one operand, nothing is contracted, or an
    operand's axes do not fall into matmul blocks without a copy. With ``keep_last``, a
    result permuted into the output's order must keep its last axis last (a ``(Re, Im)``
    axis then viewed as complex).
    """
    best = _best_matmul(equation, left, right, sizes, keep_last)
    return None if best is None else best[1]


def _best_matmul(equation, left, right, sizes, keep_last):
    """``(score, expression)`` of the best matmul layout (lower scores are better), or None."""
    ins, out = equation.split("->")
    ia, ib = ins.split(",")
    if len(set(ia)) != len(ia) or len(set(ib)) != len(ib):
        return None
    if any(x not in ib and x not in out for x in ia) or any(
        x not in ia and x not in out for x in ib
    ):
        return None
    k_axes = [x for x in ia if x in ib and x not in out]
    if not k_axes:
        return None
    # Batch axes: the shared output axes, plus any one-sided output axis broadcast over the
    # other operand (size 1 there). Of the layouts that work, the one with the fewest
    # (largest) matmuls wins, then (see _try_roles) one with a wide result, then the one with
    # the fewest permuted or transposed views.
    best = None
    for batch in _batch_orders(ia, ib, out):
        m_axes = [x for x in ia if x not in ib and x not in batch]
        n_axes = [x for x in ib if x not in ia and x not in batch]
        count = math.prod(sizes[a] for a in batch)
        for penalty, result_axes, expr in _try_roles(
            left, right, ia, ib, batch, k_axes, m_axes, n_axes, out, sizes
        ):
            if keep_last and result_axes[-1] != out[-1]:
                continue
            if best is None or (count, penalty) < best[0]:
                best = ((count, penalty), expr)
    return best


def _try_roles(left, right, ia, ib, batch, k_axes, m_axes, n_axes, out, sizes):
    """Every (penalty, result axes, expression) for the two role assignments.

    The penalty counts a narrow result first (fewer than :data:`NARROW_COLUMNS` columns and
    more rows: the transposed product is several times faster), then a permuted
    (non-contiguous) result, worse where its innermost axis is not the output's (its readers
    then read it strided: a ``full`` stream's initial-state term laid out (d, t, b) for an
    add in (b, d, t) order; ``dws`` (32, 32, 2048) streams 1.3x faster laid out (d, b, t)),
    then permuted or transposed operand views. Moving axes of size 1
    permutes nothing.
    """
    for a_name, b_name, a_axes, b_axes, m, n in (
        (left, right, ia, ib, m_axes, n_axes),
        (right, left, ib, ia, n_axes, m_axes),
    ):
        # Left operand (batch, M, K) or transposed (batch, K, M); right (batch, K, N) or (N, K).
        k_b = [x for x in b_axes if x in k_axes]
        k_a = [x for x in a_axes if x in k_axes]
        if k_a != k_b:
            continue
        a_plain = _layout(a_axes, batch, m, k_a, sizes)
        a_perm = a_plain or _layout(a_axes, batch, k_a, m, sizes)
        b_plain = _layout(b_axes, batch, k_b, n, sizes)
        b_perm = b_plain or _layout(b_axes, batch, n, k_b, sizes)
        if a_perm is None or b_perm is None:
            continue
        # A batch of one matrix is a plain 2-D product: a 3-D matmul of batch 1 spends its
        # broadcast checks, expands and reshapes on every call (a batch-1 stream chunk's
        # projections, (1, 4, 256) @ (1, 256, 256): 20.3 -> 18.6 us).
        view_batch = batch if math.prod(sizes[x] for x in batch) > 1 else []
        lhs = _view(a_name, a_axes, a_perm, view_batch, m, k_a, sizes, a_plain is None)
        rhs = _view(b_name, b_axes, b_perm, view_batch, k_b, n, sizes, b_plain is None)
        # A broadcast batch axis (size 1 in one operand only) goes through rt.bmm, which
        # expands the operand lacking it. Flattening the expanded batch is a view only when
        # that operand has none of the batch axes; with some of them it materialises
        # (batch x operand) elements: allowed while that stays a small fraction of the other
        # operand (a per-state vector against a signal), else left to einsum.
        wide = [x for x in batch if sizes[x] > 1]
        elems = {ax: math.prod(sizes[x] for x in ax) for ax in (a_axes, b_axes)}
        partial = [ax for ax in (a_axes, b_axes) if 0 < sum(x in ax for x in wide) < len(wide)]
        expanded = {
            ax: elems[ax] * math.prod(sizes[x] for x in wide if x not in ax) for ax in partial
        }
        other = {a_axes: elems[b_axes], b_axes: elems[a_axes]}
        if any(expanded[ax] > other[ax] // SMALL_EXPANSION for ax in partial):
            continue
        broadcast = any(not (x in a_axes and x in b_axes) for x in wide)
        product = f"{'rt.bmm' if broadcast else 'torch.matmul'}({lhs}, {rhs})"
        result_axes = batch + m + n
        shape = [sizes[a] for a in result_axes]
        if [sizes[a] for a in view_batch] + [
            math.prod(sizes[a] for a in m),
            math.prod(sizes[a] for a in n),
        ] != shape:
            product = f"{product}.reshape({tuple(shape)!r})"
        if "".join(result_axes) != out:
            perm = [result_axes.index(a) for a in out]
            product = f"{product}.permute({', '.join(map(str, perm))})"
        wide_result = [a for a in result_axes if sizes[a] > 1]
        wide_out = [a for a in out if sizes[a] > 1]
        # A permuted result read along its innermost axis stays row-contiguous for its
        # readers (an add, a copy); one whose innermost axis moved is read strided.
        permuted = 0 if wide_result == wide_out else 1 + (wide_result[-1:] != wide_out[-1:])
        count, rows, cols, depth = (math.prod(sizes[a] for a in ax) for ax in (batch, m, n, k_a))
        narrow = (
            cols < NARROW_COLUMNS
            and rows > cols
            and count * rows * depth >= NARROW_MIN_ELEMENTS
            and (count > 1 or cols > 1)
        )
        views = sum(p != sorted(p) for p in (a_perm, b_perm))
        transposes = (a_plain is None) + (b_plain is None)
        yield (narrow, permuted, views + transposes), result_axes, product


def realified(
    op: str,
    equation: str,
    complex_in: tuple[bool, bool],
    sizes: dict[str, int],
    conjugated: tuple[bool, bool] = (False, False),
) -> tuple[str, tuple[str, str]] | None:
    """A mixed or real-part contraction rewritten as a real one over ``(Re, Im)`` axes.

    A real times a complex operand (``einsum``, or ``einsum_real`` of such a product): the
    complex one as ``view``, the ``(Re, Im)`` axis kept last in the output, which is then
    viewed as complex (``einsum``) or its Re half taken (``einsum_real``). The real part of
    two complex operands (``einsum_real``): the smaller as ``stacked`` against ``view``, the
    axis summed; where one operand is stored ``conjugated`` (a prepared stream's constant),
    ``Re(p q) = Re p Re conj(q) + Im p Im conj(q)`` reads both as ``view``, nothing stacked.
    Returns the real equation and how each operand enters (``real``, ``view`` or
    ``stacked``), or ``None`` when there is no such rewriting.
    """
    ins, out = equation.split("->")
    left, right = ins.split(",")
    z = REAL_AXIS
    if any(conjugated):
        if op != "einsum_real" or not all(complex_in) or all(conjugated):
            return None
        return f"{left}{z},{right}{z}->{out}", ("view", "view")
    if complex_in[0] != complex_in[1]:
        # The complex operand as (Re, Im), the axis kept last: an einsum views the result as
        # complex, an einsum_real takes its Re half (the real part alone is a stride-2 view
        # that no matmul reads in place).
        if complex_in[0]:
            return f"{left}{z},{right}->{out}{z}", ("view", "real")
        return f"{left},{right}{z}->{out}{z}", ("real", "view")
    if op == "einsum" or not any(complex_in):
        return None
    first_small = math.prod(sizes[a] for a in left) <= math.prod(sizes[a] for a in right)
    kinds = ("stacked", "view") if first_small else ("view", "stacked")
    return f"{left}{z},{right}{z}->{out}", kinds


def operand_expression(name: str, kind: str) -> str:
    """The expression feeding operand ``name`` into a realified contraction."""
    return {
        "real": name,
        "view": f"torch.view_as_real({name})",
        "stacked": f"rt.stack_conj_parts({name})",
        "padded": f"rt.real_pairs({name})",
    }[kind]


def _best_realified(op, equation, names, complex_in, sizes, conjugated=(False, False)):
    """``(score, expression)`` of a mixed or real-part product as a real matmul, or None.

    A mixed ``einsum``'s result is viewed as complex, so its ``(Re, Im)`` axis must come out
    last and unit-strided (a permuted result keeps it last); so must a mixed
    ``einsum_real``'s, whose Re half is taken.
    """
    rewritten = realified(op, equation, complex_in, sizes, conjugated)
    if rewritten is None:
        return None
    eq, kinds = rewritten
    best = _best_matmul(
        eq,
        operand_expression(names[0], kinds[0]),
        operand_expression(names[1], kinds[1]),
        {**sizes, REAL_AXIS: 2},
        op == "einsum" or complex_in[0] != complex_in[1],
    )
    if best is None and op == "einsum_real" and complex_in[0] != complex_in[1]:
        return _padded_real_part(equation, names, complex_in, sizes)
    if best is None or (op == "einsum_real" and complex_in[0] == complex_in[1]):
        return best
    if op == "einsum_real":  # the (Re, Im) axis kept: its real half
        return best[0], f"{best[1]}[..., 0]"
    return best[0], f"torch.view_as_complex({best[1]})"


def _padded_real_part(equation, names, complex_in, sizes):
    """``Re(p) x`` as ``(Re p, Im p)`` against ``(x, 0)`` summed, or None.

    A mixed real part whose ``(Re, Im)`` axis cannot come out last of a matmul on views (a
    prepared stream's kernel from its table of powers, ``bTd,bd->bT``, sums the states between
    the time axis and that axis) sums the axis instead, against the real operand padded with
    zeros: a copy of the real operand, taken when it is at most 1/:data:`PADDED_MAX_SHARE` the
    size of the complex one. Measured: ``dws`` (8, 64, 1024), (64, 256, 16) powers against
    (64, 16) weights, 834 -> 129 us; ``full``'s step readout ``abde,bde->ab`` of (8, 64, 64,
    16) states, 1185 -> 179 us, but at batch 1 (equal sizes) 102 -> 143 us.
    """
    ins, out = equation.split("->")
    left, right = ins.split(",")
    real_term, complex_term = (right, left) if complex_in[0] else (left, right)
    if PADDED_MAX_SHARE * math.prod(sizes[a] for a in real_term) > math.prod(
        sizes[a] for a in complex_term
    ):
        return None
    kinds = ("view", "padded") if complex_in[0] else ("padded", "view")
    return _best_matmul(
        f"{left}{REAL_AXIS},{right}{REAL_AXIS}->{out}",
        operand_expression(names[0], kinds[0]),
        operand_expression(names[1], kinds[1]),
        {**sizes, REAL_AXIS: 2},
        False,
    )


def contraction_matmul(
    op: str,
    equation: str,
    names: tuple[str, str],
    complex_in: tuple[bool, bool],
    sizes: dict[str, int],
    conjugated: tuple[bool, bool] = (False, False),
) -> tuple[tuple, str] | None:
    """The best matmul form of a two-operand ``einsum`` or ``einsum_real`` step, or ``None``.

    Returns ``(score, expression)``: the score orders layouts (fewer, larger matmuls first,
    then fewer permuted results and operand views), so a caller free to choose an operand's
    layout can compare them. The one dispatch the code generator and the cost model share.
    ``conjugated`` flags an operand held as its conjugate (see :func:`realified`).
    """
    letters = sorted(set(equation) - set(",->"))
    key = tuple((a, sizes[a]) for a in letters)
    flags = tuple(map(bool, complex_in)), tuple(map(bool, conjugated))
    return _contraction_matmul(op, equation, tuple(names), *flags, key)


@functools.lru_cache(maxsize=65536)
def _contraction_matmul(op, equation, names, complex_in, conjugated, sizes):
    sizes = dict(sizes)
    if op == "einsum" and complex_in[0] == complex_in[1] and not any(conjugated):
        return _best_matmul(equation, names[0], names[1], sizes, False)
    return _best_realified(op, equation, names, complex_in, sizes, conjugated)


def is_weighted_sum(equation: str, sizes: dict[str, int]) -> bool:
    """Whether a two-operand ``einsum`` sums a short axis of one operand weighted by the other.

    One term holds every axis of the other, and the summed axes hold at most
    :data:`WEIGHTED_SUM_TERMS` elements (more than one: axes of length 1 are dropped, see
    ``runtime.einsum``): as a matmul that is one matrix-vector product of
    length at most 16 per batch entry (a ``full`` stream's coarse fade, ``(b, d, e, M)`` against
    ``(d, a, M, b, e)``: 65536 products of (1 x 4) by (4 x 8)), which CPU ``bmm`` runs on
    copied operands (32 ms per chunk at (8, 64, 64, 16) states), where multiplying in the
    larger operand's memory order and summing reads it once (2 ms).
    """
    if "->" not in equation or equation.count(",") != 1:
        return False
    ins, out = equation.split("->")
    left, right = ins.split(",")
    summed = (set(left) | set(right)) - set(out)
    if not summed or not (set(left) <= set(right) or set(right) <= set(left)):
        return False
    return 1 < math.prod(sizes[a] for a in summed) <= WEIGHTED_SUM_TERMS


def weighted_sum_form(
    op: str, equation: str, complex_in: tuple[bool, bool], sizes: dict[str, int]
) -> bool:
    """Whether the generator emits this step as ``rt.weighted_sum`` (the cost model agrees).

    A short weighted sum (:func:`is_weighted_sum`) with no matmul on views: a matmul that
    reads both operands in place stays one (``s5``'s chunk states, (1 x 16) by (16 x 16)
    per channel, measured 1.06-1.1x faster than the weighted sum in a stream).
    """
    return (
        op == "einsum"
        and len(complex_in) == 2
        and is_weighted_sum(equation, sizes)
        and contraction_matmul(op, equation, ("p", "q"), complex_in, sizes) is None
    )
