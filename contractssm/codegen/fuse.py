"""Peephole fusion of generated programs (the plan's steps stay as the planner chose them).

``rfft(k)``, ``rfft(u)``, their frequency-domain contraction and the ``irfft`` become one
:func:`contractssm.codegen.runtime.fft_conv` call with its own backward: an elementwise
product saves the real inputs instead of both complex spectra (about half the saved
activations of the convolution); a channel-contracting one runs frequency-major and saves
those spectra, so the backward needs no FFT of them.
"""

from __future__ import annotations

from dataclasses import replace

from contractssm.planner.steps import Step

#: Benchmarks switch fusion off to measure what it saves.
ENABLED = True


def fuse_fft_conv(steps: tuple[Step, ...], outputs: tuple[str, ...]) -> tuple[Step, ...]:
    """Replace each rfft/rfft/einsum/irfft chain whose intermediates have no other use."""
    if not ENABLED:
        return steps
    uses: dict[str, int] = {}
    for s in steps:
        for i in s.inputs:
            uses[i] = uses.get(i, 0) + 1
    for name in outputs:
        uses[name] = uses.get(name, 0) + 1
    by_output = {s.output: s for s in steps}
    fused: dict[str, Step] = {}  # irfft output -> fused step
    dropped: set[str] = set()
    for s in steps:
        if s.op != "irfft":
            continue
        mix = by_output.get(s.inputs[0])
        if mix is None or mix.op != "einsum" or len(mix.inputs) != 2 or uses[mix.output] != 1:
            continue
        ffts = [by_output.get(i) for i in mix.inputs]
        if any(f is None or f.op != "rfft" or uses[f.output] != 1 for f in ffts):
            continue
        if {f.attr("n") for f in ffts} != {s.attr("n")}:
            continue
        fused[s.output] = replace(
            s,
            op="fft_conv",
            inputs=(ffts[0].inputs[0], ffts[1].inputs[0]),
            equation=mix.equation,
        )
        dropped |= {mix.output, ffts[0].output, ffts[1].output}
    return tuple(fused.get(s.output, s) for s in steps if s.output not in dropped)
