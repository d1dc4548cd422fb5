"""contractssm: a compiler-style tensor-contraction planner for state-space model layers."""

from contractssm._version import __version__
from contractssm.codegen.bind import evaluate, evaluate_step, zero_state
from contractssm.codegen.executor import executors
from contractssm.errors import CacheError, ContractSSMError, PlanError, ShapeError, SpecError
from contractssm.ir import Canonical, Graph, Operand, Role, Skip
from contractssm.modes import ALIASES, BUILTIN_MODES, get_graph, register_mode
from contractssm.planner.api import plan
from contractssm.planner.plan import Plan
from contractssm.spec import parse

__all__ = [
    "ALIASES",
    "BUILTIN_MODES",
    "CacheError",
    "Canonical",
    "ContractSSMError",
    "Graph",
    "Operand",
    "Plan",
    "PlanError",
    "Role",
    "ShapeError",
    "Skip",
    "SpecError",
    "__version__",
    "evaluate",
    "evaluate_step",
    "executors",
    "get_graph",
    "parse",
    "plan",
    "register_mode",
    "zero_state",
]
