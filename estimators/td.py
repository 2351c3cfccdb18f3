"""TD(lambda) targets and the value loss, as pure functions on (B, T) tensors.

Layout (as in the VAS authors' code, which follows trl's PPO value update):
- one row per sample, one column per token of the value model's tokenization of
  prompt_text + completion, right-padded;
- ``values[b, t]`` is V of the prefix ending at token t;
- ``mask[b, t]`` is 1 on the *states*: the prefix that ends the prompt and every prefix that
  ends a completion token. Prompt tokens before that and padding are 0;
- ``rewards[b, t]`` is 0 everywhere except the last state of each row, which holds the
  reward of the finished text (the last completion token).

With gamma = 1 the last state's target is the reward itself, lambda = 0 bootstraps from the
next state (TD(0)) and lambda = 1 gives the Monte Carlo return: the final reward at every
state. Returns come in GAE form, ``returns = advantages + values``.
"""

from __future__ import annotations

import torch

__all__ = ["td_lambda_returns", "value_loss", "last_state_rewards"]


def td_lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> torch.Tensor:
    """TD(lambda) value targets in GAE form.

    For each state t (mask 1), with the next state t+1 counted only when its mask is 1:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        G_t     = A_t + V_t

    Args:
        rewards: (B, T) rewards, normally non-zero only on each row's last state.
        values: (B, T) V of each prefix, from a no-grad pass.
        mask: (B, T) 1 (or True) on states, 0 elsewhere; the states of a row must be
            contiguous (prompt end, then every completion token).
        gamma: discount; 1.0 in the paper.
        lam: the lambda of TD(lambda); 0 = TD(0), 1 = Monte Carlo.

    Returns:
        (B, T) targets, 0 where mask is 0. Not part of the autograd graph.

    Raises:
        ValueError: shapes differ, or gamma/lam are outside [0, 1].
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must share one (B, T) shape; got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1]; got gamma={gamma}, lam={lam}")
    with torch.no_grad():
        m = mask.to(values.dtype)
        r = rewards.to(values.dtype) * m
        v = values.detach() * m
        T = v.shape[1]
        advantages = torch.zeros_like(v)
        last_gae = torch.zeros_like(v[:, 0])  # (B,)
        for t in reversed(range(T)):
            # Gating by the next state's mask makes the last state terminal (no bootstrap) and
            # keeps padding from leaking into the recursion.
            next_m = m[:, t + 1] if t + 1 < T else torch.zeros_like(m[:, 0])
            next_v = v[:, t + 1] if t + 1 < T else torch.zeros_like(v[:, 0])
            delta = r[:, t] + gamma * next_v * next_m - v[:, t]
            last_gae = delta + gamma * lam * next_m * last_gae
            advantages[:, t] = last_gae
        return (advantages + v) * m


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0.5 * mean squared error over the states (mask 1).

    Args:
        values: (B, T) predictions (with grad).
        returns: (B, T) targets from `td_lambda_returns`.
        mask: (B, T) 1 on states.

    Returns:
        A scalar tensor; 0 when the mask is empty.
    """
    m = mask.to(values.dtype)
    count = m.sum().clamp(min=1.0)
    return 0.5 * (((values - returns.detach()) ** 2) * m).sum() / count


def last_state_rewards(final_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each row's final reward on its last state (the last 1 of the mask).

    Args:
        final_rewards: (B,) the reward of each finished text.
        mask: (B, T) state mask; every row needs at least one state.

    Returns:
        (B, T) rewards, zero except on each row's last state.

    Raises:
        ValueError: a row has no state.
    """
    m = mask.bool()
    if not bool(m.any(dim=1).all()):
        raise ValueError("every row needs at least one state (mask 1)")
    T = m.shape[1]
    positions = torch.arange(T, device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,)
    out = torch.zeros(m.shape, dtype=final_rewards.dtype, device=final_rewards.device)
    out[torch.arange(m.shape[0], device=m.device), last] = final_rewards
    return out
