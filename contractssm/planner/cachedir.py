"""Where contractssm keeps files: plan JSON and machine profiles.

``CONTRACTSSM_CACHE=off`` disables the disk (plans stay in memory); ``CONTRACTSSM_CACHE_DIR``
overrides the directory; otherwise ``$XDG_CACHE_HOME/contractssm`` or ``~/.cache/contractssm``.
"""

from __future__ import annotations

import os


def disk_enabled() -> bool:
    """Whether plans may be written to disk (``CONTRACTSSM_CACHE`` is not ``off``)."""
    return os.environ.get("CONTRACTSSM_CACHE", "on").strip().lower() not in ("off", "0", "no")


def cache_dir() -> str | None:
    """The cache directory, or ``None`` when the disk cache is disabled."""
    if not disk_enabled():
        return None
    explicit = os.environ.get("CONTRACTSSM_CACHE_DIR")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "contractssm")
