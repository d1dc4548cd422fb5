"""The ``contractssm`` command line.

Each subcommand is one small builder function registered in :data:`COMMANDS`; a builder adds
its parser to the subparsers and sets ``func`` (the handler, ``Namespace -> int``) as a default.
Adding a subcommand is writing a builder and a handler and adding one line to the registry.

User mistakes (any :class:`~contractssm.errors.ContractSSMError`) end as one line on stderr,
``contractssm: error: <message>``, and exit status 2, never a traceback.

Example:
    $ contractssm modes
    $ contractssm parse "y[b,c,l] = E[c,n] * ssm A[c,n;l] * signal x[b,c,l]"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from contractssm._version import __version__
from contractssm.errors import ContractSSMError

PROG = "contractssm"

Subparsers = Any  # argparse's private _SubParsersAction
Builder = Callable[[Subparsers], None]


def _add_parser(subparsers: Subparsers, name: str, help_text: str, epilog: str):
    """Adds a subcommand parser whose ``--help`` keeps the epilog's example layout."""
    return subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _one_line(text: str) -> str:
    """Joins a possibly multi-line message into one line."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _index_names(indices: Sequence[Any]) -> list[str]:
    """Returns index names as strings, whether indices are strings or objects with ``.name``."""
    return [str(getattr(i, "name", i)) for i in indices]


def _operand_text(operand: Any) -> str:
    """Formats an operand as ``name[i,j]``, prefixed by ``complex`` for complex weights."""
    text = f"{operand.name}[{','.join(_index_names(operand.indices))}]"
    return f"complex {text}" if getattr(operand, "is_complex", False) else text


# --- modes -------------------------------------------------------------------------------------


def _run_modes(args: argparse.Namespace) -> int:
    """Prints the built-in modes as a table: name, aliases, declaration."""
    from contractssm.modes import ALIASES, BUILTIN_MODES

    aliases: dict[str, list[str]] = {}
    for alias, name in sorted(ALIASES.items()):
        aliases.setdefault(name, []).append(alias)
    rows = [("name", "aliases", "declaration")]
    for name, text in BUILTIN_MODES.items():
        rows.append((name, ",".join(aliases.get(name, [])) or "-", _one_line(text)))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for name, alias_text, text in rows:
        print(f"{name:<{w0}}  {alias_text:<{w1}}  {text}")
    return 0


def _build_modes(subparsers: Subparsers) -> None:
    """Registers ``contractssm modes``."""
    parser = _add_parser(
        subparsers,
        "modes",
        "List the built-in modes: name, aliases and declaration.",
        "example:\n  contractssm modes",
    )
    parser.set_defaults(func=_run_modes)


# --- parse -------------------------------------------------------------------------------------


def _run_parse(args: argparse.Namespace) -> int:
    """Parses a declaration or built-in mode name and prints the resulting graph."""
    from contractssm.modes import get_graph

    graph = get_graph(args.declaration)
    if args.json:
        print(json.dumps(graph.to_dict(), indent=2))
        return 0
    rec = graph.recurrence
    rates = ",".join(_index_names(rec.indices))  # the recurrence's own (state) indices
    state = ",".join(_index_names(graph.state_indices))  # the recurrent state's axes
    time = _index_names([graph.time])[0]
    weights = ", ".join(_operand_text(w) for w in graph.weights) or "-"
    skip = "-"
    if graph.skip is not None:
        skip_weights = graph.skip.weights
        if hasattr(skip_weights, "name"):  # a single operand rather than a tuple
            skip_weights = (skip_weights,)
        signal_idx = ",".join(_index_names(graph.skip.signal_indices))
        terms = [_operand_text(w) for w in skip_weights]
        skip = " * ".join([*terms, f"{graph.signal.name}[{signal_idx}]"])
    print(f"declaration:   {graph.to_text()}")
    print(f"canonical key: {graph.canonical().key}")
    print(f"signal:        {_operand_text(graph.signal)}  (time index {time})")
    print(f"recurrence:    {rec.name}[{rates};{time}]  (generator {rec.generator})")
    print(f"state:         ({state})")
    print(f"weights:       {weights}")
    print(f"skip:          {skip}")
    return 0


def _build_parse(subparsers: Subparsers) -> None:
    """Registers ``contractssm parse``."""
    parser = _add_parser(
        subparsers,
        "parse",
        "Parse a declaration (or a built-in mode name) and show the graph it defines.",
        "examples:\n"
        "  contractssm parse dws\n"
        '  contractssm parse "y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]"\n'
        "  contractssm parse --json neck",
    )
    parser.add_argument("declaration", metavar="DECLARATION_OR_MODE")
    parser.add_argument("--json", action="store_true", help="print the graph as JSON")
    parser.set_defaults(func=_run_parse)


# --- entry point -------------------------------------------------------------------------------


def _planning(name: str) -> Builder:
    """A builder from :mod:`contractssm.cli_planning` (imported when the parser is built)."""

    def build(subparsers: Subparsers) -> None:
        from contractssm import cli_planning

        getattr(cli_planning, f"build_{name}")(subparsers, _add_parser)

    return build


COMMANDS: dict[str, Builder] = {
    "modes": _build_modes,
    "parse": _build_parse,
    "plan": _planning("plan"),
    "explain": _planning("explain"),
    "cache": _planning("cache"),
    "calibrate": _planning("calibrate"),
    "bench": _planning("bench"),
    "demo": _planning("demo"),
}


def build_parser() -> argparse.ArgumentParser:
    """Builds the top-level parser with every registered subcommand.

    Returns:
        The ``contractssm`` argument parser.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Plan and generate executors for state-space-model layers declared as "
        "einsum graphs.",
        epilog="example:\n  contractssm modes\n  contractssm parse dws",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for build in COMMANDS.values():
        build(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 for a usage error or a rejected input.

    Example:
        >>> main(["parse", "dws"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or an argparse usage error
        if exc.code is None:
            return 0
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except ContractSSMError as exc:
        message = _one_line(str(exc)) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
