"""utils.train_minibatches: the shared mini-batch loop of chapters 6 and 7, checked against the loop written out."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import utils

N, BATCH, EPOCHS = 50, 8, 3  # 7 batches per epoch, the last of 2 examples


def problem(seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """A small regression net and its data: ``Tensor[N, 5]`` inputs, ``Tensor[N, 1]`` targets."""
    torch.manual_seed(seed)
    x = torch.randn(N, 5)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1)), x, x.sum(1, keepdim=True) ** 2


def flip_loss(model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator):
    """A batch loss that, like the chapters' random mirror images, draws from the permutations' generator."""

    def batch_loss(idx: Tensor) -> Tensor:
        sign = torch.where(torch.rand(len(idx), generator=generator) < 0.5, -1.0, 1.0)[:, None]
        return F.mse_loss(model(sign * x[idx]), y[idx])

    return batch_loss


def setup(
    seed: int, scheduled: bool
) -> tuple[nn.Module, Tensor, Tensor, torch.Generator, torch.optim.Optimizer, object]:
    model, x, y = problem(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = EPOCHS * math.ceil(N / BATCH)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=steps) if scheduled else None
    return model, x, y, generator, optimizer, scheduler


def hand_loop(seed: int, scheduled: bool, clip: float | None) -> tuple[nn.Module, list[float], torch.Generator]:
    """The loop as chapter 7's ``train_detr`` wrote it before the shared one existed."""
    model, x, y, generator, optimizer, scheduler = setup(seed, scheduled)
    batch_loss = flip_loss(model, x, y, generator)
    history = []
    for _epoch in range(EPOCHS):
        model.train()
        total = 0.0
        for idx in torch.randperm(N, generator=generator).split(BATCH):
            loss = batch_loss(idx)
            optimizer.zero_grad()
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(idx) / N
        history.append(total)
    return model, history, generator


def shared_loop(seed: int, scheduled: bool, clip: float | None) -> tuple[nn.Module, list[float], torch.Generator]:
    model, x, y, generator, optimizer, scheduler = setup(seed, scheduled)
    history = utils.train_minibatches(
        model,
        N,
        flip_loss(model, x, y, generator),
        optimizer,
        EPOCHS,
        BATCH,
        generator,
        scheduler=scheduler,
        clip_grad_norm=clip,
    )
    return model, history, generator


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("scheduled,clip", [(False, None), (True, None), (False, 0.5), (True, 0.5)])
def test_the_shared_loop_is_bitwise_the_loop_written_out(scheduled, clip):
    ours, our_history, our_generator = shared_loop(0, scheduled, clip)
    reference, ref_history, ref_generator = hand_loop(0, scheduled, clip)
    assert same_parameters(ours, reference), f"scheduler={scheduled}, clip={clip}: the weights differ"
    assert our_history == ref_history, f"scheduler={scheduled}, clip={clip}: {our_history} != {ref_history}"
    assert torch.equal(our_generator.get_state(), ref_generator.get_state()), "random numbers consumed differently"


@pytest.mark.parametrize("scheduled,clip", [(True, None), (False, 0.5)])
def test_the_scheduler_and_the_clip_change_the_run(scheduled, clip):
    # the comparison above is blind to an option that does nothing in this problem: make sure each one matters
    with_option, _, _ = hand_loop(0, scheduled, clip)
    without, _, _ = hand_loop(0, False, None)
    assert not same_parameters(with_option, without)


def test_the_scheduler_steps_once_per_optimizer_step():
    model, x, y, generator, optimizer, scheduler = setup(0, scheduled=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    utils.train_minibatches(model, N, flip_loss(model, x, y, generator), optimizer, EPOCHS, BATCH, generator, scheduler)
    assert scheduler.last_epoch == EPOCHS * math.ceil(N / BATCH)


def test_the_clip_bounds_the_gradient_norm_of_every_step():
    model, x, y, generator, optimizer, _ = setup(0, scheduled=False)
    batch_loss = flip_loss(model, x, y, generator)
    norms = []

    def record_norm(_optimizer, _args, _kwargs) -> None:
        norms.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())

    optimizer.register_step_pre_hook(record_norm)
    utils.train_minibatches(model, N, batch_loss, optimizer, EPOCHS, BATCH, generator, clip_grad_norm=0.01)
    assert len(norms) == EPOCHS * math.ceil(N / BATCH) and max(norms) < 0.01 * (1 + 1e-5)


def test_the_mean_is_weighted_by_batch_size():
    # batches of 8, 8, 8, 8, 8, 8 and 2: a loss equal to the batch size gives (6 * 8 * 8 + 2 * 2) / 50 per epoch,
    # the unweighted mean of the steps' losses would be (6 * 8 + 2) / 7
    weight = nn.Parameter(torch.ones(()))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    history = utils.train_minibatches(
        weight_holder(weight), N, lambda idx: weight * len(idx), optimizer, 2, BATCH, torch.Generator()
    )
    assert history == pytest.approx([(6 * 8 * 8 + 2 * 2) / N] * 2, abs=1e-12)


def weight_holder(weight: nn.Parameter) -> nn.Module:
    module = nn.Module()
    module.weight = weight
    return module


def test_the_permutations_come_from_the_given_generator_and_the_global_one_is_untouched():
    seen = []
    weight = nn.Parameter(torch.zeros(()))
    torch.manual_seed(123)
    utils.train_minibatches(
        weight_holder(weight),
        N,
        lambda idx: seen.append(idx) or weight * 0,
        torch.optim.SGD([weight], lr=0.1),
        EPOCHS,
        BATCH,
        torch.Generator().manual_seed(7),
    )
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3)), "the loop drew from torch's global generator"
    reference = torch.Generator().manual_seed(7)
    expected = [idx for _ in range(EPOCHS) for idx in torch.randperm(N, generator=reference).split(BATCH)]
    assert len(seen) == len(expected) and all(torch.equal(a, b) for a, b in zip(seen, expected))


def test_every_epoch_starts_in_training_mode():
    model, x, y, generator, optimizer, _ = setup(0, scheduled=False)
    modes = []

    def batch_loss(idx: Tensor) -> Tensor:
        modes.append(model.training)
        loss = F.mse_loss(model(x[idx]), y[idx])
        if len(idx) < BATCH:  # the epoch's last batch: evaluate, as a caller might between epochs
            model.eval()
        return loss

    model.eval()
    history = utils.train_minibatches(model, N, batch_loss, optimizer, EPOCHS, BATCH, generator)
    assert all(modes) and len(history) == EPOCHS
