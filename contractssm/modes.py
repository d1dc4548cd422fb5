"""The built-in SSM connectivity modes, each one declaration (SPEC.md sections 3 and 4).

Operands are the *effective* tensors an executor contracts: the layers fold discretisation
into them (``B`` below is ``dt * B`` for ``s5``, ``A`` is the rate ``Lambda = dt * A_c``, S4D's
``W`` carries the factor 2 of ``2 Re``), so a declaration states connectivity only.

Example:
    >>> get_graph("pw").state_indices
    ('b', 's')
    >>> decl = "y[b,g,d,l] = C[g,d,s] * ssm A[g,s;l] * B[g,s,c] * signal x[b,g,c,l]"
    >>> graph = register_mode("grouped", decl)
    >>> get_graph("grouped").state_indices
    ('b', 'g', 's')
"""

from __future__ import annotations

from contractssm.errors import SpecError
from contractssm.ir import Graph
from contractssm.spec import parse

BUILTIN_MODES: dict[str, str] = {
    # Centaurus (arXiv 2501.13230), SPEC.md section 3.
    "dws": "y[b,c,l] = E[c,n] * ssm A[c,n;l] * signal x[b,c,l]",
    "s5": "y[b,d,l] = C[d,s] * ssm A[s;l] * B[s,c] * signal x[b,c,l]",
    "neck": "y[b,d,l] = C[d,n] * E[n,m] * ssm A[n,m;l] * B[n,c] * signal x[b,c,l]",
    "full": "y[b,d,l] = E[d,c,n] * ssm A[d,c,n;l] * signal x[b,c,l]",
    # Models, SPEC.md section 4.
    "s4d": "y[b,k,h,l] = complex W[k,h,n] * ssm A[h,n;l] * signal x[b,h,l] + D[k,h] * x[b,h,l]",
    "s4": "y[b,k,h,l] = complex W[k,h,n] * ssm(s4) A[h,n;l] * signal x[b,h,l] + D[k,h] * x[b,h,l]",
    "s5_mimo": (
        "y[b,h,l] = complex C[h,p] * ssm A[p;l] * complex B[p,g] * signal x[b,g,l]"
        " + D[h] * x[b,h,l]"
    ),
    "lru": (
        "y[b,h,l] = complex C[h,n] * gamma[n] * ssm A[n;l] * complex B[n,g] * signal x[b,g,l]"
        " + D[h] * x[b,h,l]"
    ),
}

ALIASES: dict[str, str] = {"pointwise": "s5", "pw": "s5"}

_USER_MODES: dict[str, str] = {}


def register_mode(name: str, declaration: str, *, overwrite: bool = False) -> Graph:
    """Register a declaration under a name usable wherever a built-in mode name is.

    Raises:
        SpecError: the declaration is invalid, or the name is taken (and not ``overwrite``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise SpecError(f"mode name {name!r} is not an identifier")
    if name in BUILTIN_MODES or name in ALIASES:
        raise SpecError(f"mode {name!r} is built in and cannot be replaced")
    if name in _USER_MODES and not overwrite:
        raise SpecError(f"mode {name!r} is already registered; pass overwrite=True to replace it")
    graph = parse(declaration)
    _USER_MODES[name] = declaration
    return graph


def mode_names() -> list[str]:
    """Every registered mode name (built-in first), without aliases."""
    return [*BUILTIN_MODES, *_USER_MODES]


def declaration_of(name_or_declaration: str) -> str:
    """The declaration text of a mode name or alias; a declaration is returned unchanged."""
    name = ALIASES.get(name_or_declaration, name_or_declaration)
    if name in BUILTIN_MODES:
        return BUILTIN_MODES[name]
    if name in _USER_MODES:
        return _USER_MODES[name]
    if "=" not in name_or_declaration:
        known = ", ".join([*mode_names(), *ALIASES])
        raise SpecError(f"unknown mode {name_or_declaration!r} (known: {known})")
    return name_or_declaration


def get_graph(name_or_declaration: str) -> Graph:
    """Resolve a built-in or registered mode name, an alias, or a declaration to a graph."""
    if isinstance(name_or_declaration, Graph):
        return name_or_declaration
    if not isinstance(name_or_declaration, str):
        raise SpecError(
            f"expected a mode name or declaration, got {type(name_or_declaration).__name__}"
        )
    return parse(declaration_of(name_or_declaration))
