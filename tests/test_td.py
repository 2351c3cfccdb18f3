"""TD(lambda) targets against hand-computed cases, and the masked 0.5 * MSE loss."""

from __future__ import annotations

import pytest
import torch

from estimators.td import last_state_rewards, td_lambda_returns, value_loss

# One prompt token that is not a state, then three states; reward 1 on the last one.
VALUES = torch.tensor([[9.0, 0.1, 0.2, 0.3]])
MASK = torch.tensor([[0, 1, 1, 1]])
REWARDS = torch.tensor([[0.0, 0.0, 0.0, 1.0]])


def test_td0_bootstraps_from_the_next_state():
    got = td_lambda_returns(REWARDS, VALUES, MASK, gamma=1.0, lam=0.0)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.2, 0.3, 1.0]]))


def test_lambda_one_is_the_monte_carlo_return():
    got = td_lambda_returns(REWARDS, VALUES, MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(got, torch.tensor([[0.0, 1.0, 1.0, 1.0]]))


def test_lambda_half_mixes_n_step_returns():
    # G_2 = 0.5 * V_3 + 0.5 * R = 0.65; G_1 = 0.5 * V_2 + 0.25 * V_3 + 0.25 * R = 0.425
    got = td_lambda_returns(REWARDS, VALUES, MASK, gamma=1.0, lam=0.5)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.425, 0.65, 1.0]]))


def test_discount_applies_per_step():
    got = td_lambda_returns(REWARDS, VALUES, MASK, gamma=0.9, lam=1.0)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.81, 0.9, 1.0]]))


def test_padding_does_not_leak_into_the_targets():
    # Row 2 is right-padded with garbage values and a stray reward under the padding.
    values = torch.tensor([[9.0, 0.1, 0.2, 0.3], [0.5, 0.2, 99.0, 99.0]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]])
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.0, 5.0]])
    for lam in (0.0, 0.95, 1.0):
        got = td_lambda_returns(rewards, values, mask, lam=lam)
        alone = td_lambda_returns(rewards[1:, :2], values[1:, :2], mask[1:, :2], lam=lam)
        torch.testing.assert_close(got[1, :2], alone[0])
        assert got[1, 2:].abs().sum() == 0
    torch.testing.assert_close(
        td_lambda_returns(rewards, values, mask, lam=0.0)[1], torch.tensor([0.2, -1.0, 0.0, 0.0])
    )


def test_single_state_row_targets_the_reward():
    got = td_lambda_returns(torch.tensor([[0.7]]), torch.tensor([[0.1]]), torch.tensor([[1]]))
    torch.testing.assert_close(got, torch.tensor([[0.7]]))


def test_returns_carry_no_gradient():
    values = VALUES.clone().requires_grad_(True)
    assert not td_lambda_returns(REWARDS, values, MASK).requires_grad


def test_bad_shapes_and_parameters_are_refused():
    with pytest.raises(ValueError, match="shape"):
        td_lambda_returns(REWARDS, VALUES[:, :3], MASK)
    with pytest.raises(ValueError, match="lam"):
        td_lambda_returns(REWARDS, VALUES, MASK, lam=1.5)


def test_last_state_rewards_places_the_reward_on_the_last_state():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    got = last_state_rewards(torch.tensor([2.0, -1.0]), mask)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, -1.0]]))
    with pytest.raises(ValueError):
        last_state_rewards(torch.tensor([1.0]), torch.tensor([[0, 0]]))


def test_value_loss_is_half_mse_over_states():
    values = torch.tensor([[5.0, 1.0, 2.0]])
    returns = torch.tensor([[0.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1]])
    torch.testing.assert_close(value_loss(values, returns, mask), torch.tensor(0.5 * (1 + 4) / 2))
    assert value_loss(values, returns, torch.zeros_like(mask)) == 0
