"""Lion: the sign of an interpolated momentum (Chen et al. 2023)."""

from __future__ import annotations

from fusedopt.kernels.language import sign
from fusedopt.kernels.registry import GRAD_DOC, GRAD_SCALE, PARAM_DOC, beta, real, register
from fusedopt.kernels.rules._common import LR_DOC, weight_decay_split


# --------------------------------------------------------------------------- Lion
def lion_scalars(*, lr: float, beta1: float, beta2: float, weight_decay: float,
                 grad_scale: float) -> tuple[float, ...]:
    """Host scalars of :func:`lion`."""
    param_scale, _ = weight_decay_split(lr, weight_decay, True)
    return (grad_scale, lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, param_scale)


@register(device_scalars=True, specialised=("grad_scale", "param_scale"),
          arrays={"param": PARAM_DOC, "grad": GRAD_DOC,
                  "exp_avg": "momentum m, an average of the gradients (start at 0)"},
          writes=("param", "exp_avg"), host_scalars=lion_scalars,
          hyper=(real("lr", 1e-4, LR_DOC, symbol=r"\alpha"),
                 beta("beta1", 0.9, "weight of the momentum in the step's direction",
                      r"\beta_1"),
                 beta("beta2", 0.99, "decay of the momentum", r"\beta_2"),
                 real("weight_decay", 0.0, "decoupled: the parameter shrinks by "
                      "(1 - lr*weight_decay)", symbol=r"\lambda"),
                 GRAD_SCALE),
          typical_lr=1e-3, optimizer="Lion")
def lion(param, grad, exp_avg, grad_scale, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
         param_scale):
    r"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    .. math::
        c = \beta_1 m + (1-\beta_1) g,\quad
        \theta \leftarrow \theta\,(1-\alpha\lambda) - \alpha\,\mathrm{sign}(c),\quad
        m \leftarrow \beta_2 m + (1-\beta_2) g

    ``sign(0) = 0``. The sign moves every coordinate by ``lr`` (or not at all)
    before weight decay, so Lion's ``lr`` is typically 3-10x smaller than Adam's.
    """
    g = grad * grad_scale
    direction = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg = beta2 * exp_avg + one_minus_beta2 * g
    return param * param_scale - lr * sign(direction), exp_avg
