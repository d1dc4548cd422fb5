"""The declaration language: one readable line per SSM connectivity mode.

Grammar (whitespace is free)::

    declaration := output '=' term ['+' term]
    output      := NAME '[' indices ']'
    term        := factor ('*' factor)*
    factor      := modifier* NAME '[' indices [';' NAME] ']'
    modifier    := 'signal' | 'ssm' | 'ssm(' NAME ')' | 'complex' | 'real'

The first term is the main product; the output is its real part. In it, ``signal`` marks the
real input (it carries the time index), ``ssm`` marks the one diagonal recurrence, written with
its state indices, ``;`` and the time index (``ssm(s4)`` names a kernel generator other than
the diagonal Vandermonde), and every other factor is a time-invariant weight, real unless marked
``complex``. The optional second term is a skip: real weights times the signal, which may be
re-indexed (``D[h] * x[b,h,l]`` maps the signal's channel onto the output's).

Example:
    >>> g = parse("y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]")
    >>> g.recurrence.indices, g.time, [w.name for w in g.weights]
    (('s',), 'l', ['C', 'B'])
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from contractssm.errors import SpecError
from contractssm.ir import DIAGONAL, Graph, Operand, Role, Skip, check_identifier

_TOKEN = re.compile(r"\s*(?:(?P<punct>[\[\],;=*+()])|(?P<word>[^\s\[\],;=*+()]+))")
_MODIFIERS = ("signal", "ssm", "complex", "real")


@dataclass(frozen=True)
class _Token:
    text: str
    column: int


@dataclass(frozen=True)
class _Factor:
    name: str
    indices: tuple[str, ...]
    time: str | None
    modifiers: tuple[str, ...]
    generator: str
    column: int


def parse(text: str) -> Graph:
    """Parse a declaration into a validated :class:`~contractssm.ir.Graph`.

    Results are cached per text (graphs are immutable).

    Raises:
        SpecError: the text is not a valid declaration; the message names the operand, the
            index and the column where the problem is.

    Example:
        >>> parse("y[b,c,l] = E[c,n] * ssm A[c,n;l] * signal x[b,c,l]").state_indices
        ('b', 'c', 'n')
    """
    if not isinstance(text, str):
        raise SpecError(f"a declaration must be a string, got {type(text).__name__}")
    return _parse_cached(text)


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str) -> Graph:
    if not text.strip():
        raise SpecError("empty declaration: write e.g. 'y[b,c,l] = ssm A[c,n;l] * signal x[b,c,l]'")
    return _Parser(text).declaration()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    @staticmethod
    def _tokenize(text: str) -> list[_Token]:
        tokens, pos = [], 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:  # only trailing whitespace is left
                break
            word = m.group("punct") or m.group("word")
            tokens.append(_Token(word, m.start(m.lastgroup) + 1))
            pos = m.end()
        return tokens

    # -- token helpers ---------------------------------------------------------------------

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        tok = self.peek()
        if tok is None:
            raise SpecError(f"declaration ends early: {self.text!r}")
        self.pos += 1
        return tok

    def expect(self, punct: str, context: str) -> _Token:
        tok = self.take()
        if tok.text != punct:
            raise SpecError(
                f"expected {punct!r} {context} at column {tok.column}, got {tok.text!r}"
            )
        return tok

    def name(self, what: str) -> str:
        tok = self.take()
        try:
            return check_identifier(tok.text, what)
        except SpecError as err:
            raise SpecError(f"{err} (column {tok.column})") from None

    # -- grammar ---------------------------------------------------------------------------

    def declaration(self) -> Graph:
        out_name = self.name("output name")
        self.expect("[", f"after output {out_name!r}")
        out_idx, out_time = self.indices(out_name)
        if out_time is not None:
            raise SpecError(f"output {out_name!r} lists plain indices; ';' belongs to the ssm")
        self.expect("=", f"after output {out_name!r}[...]")
        main = self.term()
        skip = None
        tok = self.peek()
        if tok is not None and tok.text == "+":
            self.take()
            skip = self.term()
        tok = self.peek()
        if tok is not None:
            raise SpecError(f"unexpected {tok.text!r} at column {tok.column}")
        return self.build(out_name, out_idx, main, skip)

    def term(self) -> list[_Factor]:
        factors = [self.factor()]
        while (tok := self.peek()) is not None and tok.text == "*":
            self.take()
            factors.append(self.factor())
        return factors

    def factor(self) -> _Factor:
        modifiers, generator = [], DIAGONAL
        column = self.peek().column if self.peek() else len(self.text)
        while (tok := self.peek()) is not None and tok.text in _MODIFIERS:
            nxt = self.tokens[self.pos + 1] if self.pos + 1 < len(self.tokens) else None
            if nxt is not None and nxt.text == "[":  # an operand that happens to be named 'ssm'
                break
            self.take()
            if tok.text in modifiers:
                raise SpecError(f"modifier {tok.text!r} repeated at column {tok.column}")
            modifiers.append(tok.text)
            if tok.text == "ssm" and nxt is not None and nxt.text == "(":
                self.take()
                generator = self.name("kernel generator")
                self.expect(")", f"after ssm({generator}")
        name = self.name("operand name")
        self.expect("[", f"after operand {name!r}")
        indices, time = self.indices(name)
        return _Factor(name, indices, time, tuple(modifiers), generator, column)

    def indices(self, owner: str) -> tuple[tuple[str, ...], str | None]:
        indices: list[str] = []
        time = None
        tok = self.peek()
        if tok is not None and tok.text in ("]", ";"):
            pass
        else:
            indices.append(self.name(f"index of {owner!r}:"))
            while (tok := self.peek()) is not None and tok.text == ",":
                self.take()
                indices.append(self.name(f"index of {owner!r}:"))
        tok = self.peek()
        if tok is not None and tok.text == ";":
            self.take()
            time = self.name(f"time index of {owner!r}:")
        self.expect("]", f"closing the indices of {owner!r}")
        return tuple(indices), time

    # -- meaning ---------------------------------------------------------------------------

    def build(
        self, out_name: str, out_idx: tuple, main: list[_Factor], skip: list[_Factor] | None
    ) -> Graph:
        factors = [self.operand(f) for f in main]
        recs = [f for f in main if "ssm" in f.modifiers]
        if len(recs) != 1:
            names = ", ".join(repr(f.name) for f in recs) or "none"
            raise SpecError(
                f"a declaration needs exactly one recurrence (marked 'ssm'), found {len(recs)}"
                f" ({names})"
            )
        rec = recs[0]
        if rec.time is None:
            raise SpecError(
                f"recurrence {rec.name!r} has no time index: write {rec.name}"
                f"[{','.join(rec.indices) or 'n'};l]"
            )
        for f in main:
            if f is not rec and f.time is not None:
                raise SpecError(f"operand {f.name!r} uses ';', which only the ssm recurrence may")
        return Graph(out_name, out_idx, rec.time, tuple(factors), self.skip(main, skip))

    @staticmethod
    def operand(f: _Factor) -> Operand:
        mods = set(f.modifiers)
        if len(mods & {"signal", "ssm"}) > 1 or {"complex", "real"} <= mods:
            raise SpecError(f"operand {f.name!r} has conflicting modifiers {sorted(mods)}")
        if "ssm" in mods:
            if "real" in mods:
                raise SpecError(f"recurrence {f.name!r} is complex; drop 'real'")
            return Operand(f.name, f.indices, Role.RECURRENCE, True, f.generator)
        if "signal" in mods:
            if "complex" in mods:
                raise SpecError(f"signal {f.name!r} must be real; drop 'complex'")
            return Operand(f.name, f.indices, Role.SIGNAL)
        return Operand(f.name, f.indices, Role.WEIGHT, "complex" in mods)

    @staticmethod
    def skip(main: list[_Factor], skip: list[_Factor] | None) -> Skip | None:
        if skip is None:
            return None
        signal = next((f for f in main if "signal" in f.modifiers), None)
        if signal is None:
            return None  # Graph validation reports the missing signal
        refs = [k for k, f in enumerate(skip) if f.name == signal.name]
        if len(refs) != 1:
            raise SpecError(
                f"the skip term must contain the signal {signal.name!r} exactly once, "
                f"found it {len(refs)} times"
            )
        weights = []
        for k, f in enumerate(skip):
            if k == refs[0]:
                if set(f.modifiers) - {"signal"}:
                    raise SpecError(f"signal {f.name!r} in the skip term takes no modifiers")
                if f.time is not None:
                    raise SpecError(
                        f"signal {f.name!r} in the skip term uses ';' (time index {f.time!r}), "
                        "which only the ssm recurrence may; list the time index as a plain index"
                    )
                continue
            if "ssm" in f.modifiers or "signal" in f.modifiers or f.time is not None:
                raise SpecError(
                    f"skip factor {f.name!r} must be a plain real weight (no ssm, signal or ';')"
                )
            if "complex" in f.modifiers:
                raise SpecError(f"skip weight {f.name!r} must be real")
            weights.append(Operand(f.name, f.indices))
        ref = skip[refs[0]]
        return Skip(tuple(weights), ref.indices, refs[0])
