"""The exception hierarchy: one base class, one subclass per kind of mistake.

Every error raised for user input derives from :class:`ContractSSMError`, and its message names
the culprit (operand, index, sizes), so a user can fix the input without reading our code.
"""


class ContractSSMError(Exception):
    """Base class of every error contractssm raises on purpose."""


class SpecError(ContractSSMError, ValueError):
    """A declaration is malformed, or sizes bound to it are inconsistent."""


class ShapeError(ContractSSMError, ValueError):
    """A tensor handed to a layer or executor has the wrong shape, dtype or device."""


class PlanError(ContractSSMError, RuntimeError):
    """No plan satisfies the request (for example, every candidate exceeds the memory limit)."""


class CacheError(ContractSSMError, RuntimeError):
    """A plan cache entry cannot be read or written (reported as a warning where recoverable)."""
