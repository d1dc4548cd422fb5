"""Optimizer parameter groups: the recurrence parameters apart, as the SSM literature trains them.

S4, S5 and LRU train the parameters of the recurrence (the continuous eigenvalues, the step
size, the LRU's ``nu``/``theta``/``gamma`` logs) with a smaller learning rate and no weight
decay. :func:`param_groups` splits any model into those two groups.

Example:
    >>> import torch
    >>> from contractssm.layers.s4d import S4D
    >>> model = torch.nn.Sequential(S4D(8, 16), torch.nn.Linear(8, 2))
    >>> groups = param_groups(model, lr=1e-2, ssm_lr=1e-3, weight_decay=0.05)
    >>> [g["name"] for g in groups], [len(g["params"]) for g in groups]
    (['default', 'ssm'], [6, 3])
    >>> opt = torch.optim.AdamW(groups)
"""

from __future__ import annotations

from torch import nn

#: Parameter names (the last component of a dotted name) that belong to a recurrence in every
#: layer: S4D/S4 ``log_A_real``/``A_imag``, ``log_dt``, S5 ``Lambda_re``/``Lambda_im``, LRU
#: ``nu_log``/``theta_log``/``gamma_log``, Centaurus' ``A``.
RECURRENCE_NAMES = frozenset(
    {
        "A",
        "A_real",
        "log_A_real",
        "inv_A_real",
        "A_imag",
        "log_dt",
        "Lambda_re",
        "Lambda_im",
        "nu_log",
        "theta_log",
        "gamma_log",
    }
)


def recurrence_parameter_names(model: nn.Module) -> list[str]:
    """Dotted names of ``model``'s recurrence parameters.

    A parameter is one when its last name component is in :data:`RECURRENCE_NAMES` or ends in
    ``_log_dt``, when its module lists it in ``recurrence_parameters`` (S4's ``P`` and ``B``,
    which generate its dense recurrence), or when its module is an
    :class:`~contractssm.layers.base.SSMModule` whose graph's recurrence operand it names.
    """
    from contractssm.layers.base import SSMModule

    names = []
    for prefix, module in model.named_modules():
        own = set(getattr(module, "recurrence_parameters", ()))
        if isinstance(module, SSMModule):
            rec = module.graph.recurrence.name
            own |= {rec, f"{rec}_log_dt"}
        for name, _ in module.named_parameters(recurse=False):
            if name in own or name in RECURRENCE_NAMES or name.endswith("_log_dt"):
                names.append(f"{prefix}.{name}" if prefix else name)
    return names


def param_groups(
    model: nn.Module,
    lr: float = 1e-3,
    ssm_lr: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Two optimizer groups: ordinary parameters and recurrence parameters.

    Everything else gets ``lr`` and ``weight_decay``; the recurrence parameters (see
    :func:`recurrence_parameter_names`) get ``ssm_lr`` and weight decay 0. An empty group is
    left out.

    Args:
        model: any module (a layer or a whole network).
        lr: learning rate of the ordinary parameters.
        ssm_lr: learning rate of the recurrence parameters (``lr`` when ``None``).
        weight_decay: weight decay of the ordinary parameters.

    Returns:
        a list of dicts for ``torch.optim`` (each also carries a ``"name"``: ``"default"`` or
        ``"ssm"``); parameters that do not require grad are left out, shared ones appear once.
    """
    recurrent = set(recurrence_parameter_names(model))
    ssm, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (ssm if name in recurrent else other).append(p)
    groups = [
        {"name": "default", "params": other, "lr": lr, "weight_decay": weight_decay},
        {"name": "ssm", "params": ssm, "lr": lr if ssm_lr is None else ssm_lr, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
