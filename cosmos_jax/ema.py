"""EDM2's power-function EMA as upstream applies it (docs/upstream.md §6.4; Karras et al. 2024, Eq. 3 and
Algorithm 2).

beta(it) = 0 at iteration 0, else (1 - 1/(it + 1))^(gamma + 1), with gamma the largest real root of
x^3 + 7x^2 + (16 - s^-2)x + (12 - s^-2) (relative std s; s = 0.1 gives gamma = 6.94). The EMA restarts from the
regular weights at step 0 of post-training and is kept in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def power_gamma(s: float) -> float:
    """gamma for relative standard deviation s (EDM2 Eq. 3 solved for gamma)."""
    roots = np.roots([1.0, 7.0, 16.0 - s**-2, 12.0 - s**-2])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_beta(step, gamma: float):
    """beta at iteration `step` (0 at step 0, so the EMA starts as a copy)."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.where(step == 0, 0.0, (1.0 - 1.0 / (step + 1.0)) ** (gamma + 1.0))


def update(ema_tree, params_tree, beta):
    """ema <- beta * ema + (1 - beta) * params, in fp32."""
    return jax.tree.map(lambda e, p: (beta * e + (1.0 - beta) * p.astype(jnp.float32)).astype(e.dtype),
                        ema_tree, params_tree)
