"""contractssm: a compiler-style tensor-contraction planner for state-space model layers."""

from contractssm._version import __version__
from contractssm.errors import CacheError, ContractSSMError, PlanError, ShapeError, SpecError
from contractssm.ir import Canonical, Graph, Operand, Role, Skip
from contractssm.modes import ALIASES, BUILTIN_MODES, get_graph, register_mode
from contractssm.spec import parse

__all__ = [
    "ALIASES",
    "BUILTIN_MODES",
    "CacheError",
    "Canonical",
    "ContractSSMError",
    "Graph",
    "Operand",
    "PlanError",
    "Role",
    "ShapeError",
    "Skip",
    "SpecError",
    "__version__",
    "get_graph",
    "parse",
    "register_mode",
]
