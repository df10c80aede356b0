"""The parts of `triune_trl.trainer.async_rollouts` that need no server: reading the Trainer's epoch iterator ahead
without changing what the Trainer gets, and knowing which position a batch had (the runs are in test_vllm_server)."""

from __future__ import annotations

import torch

from triune_trl.trainer.async_rollouts import Lookahead, snapshot_weights, weights_swapped


def test_reading_ahead_changes_nothing_the_trainer_gets_and_stops_at_the_epochs_end():
    batches = [[{"row": i}] for i in range(5)]
    lookahead = Lookahead(iter(batches), remember=2)
    assert next(lookahead) is batches[0]
    assert lookahead.at(3) is batches[3] and lookahead.at(2) is batches[2]  # read ahead, in any order
    assert lookahead.at(5) is None and lookahead.at(0) is None  # past the epoch; already taken
    assert list(lookahead) == batches[1:]  # the trainer still gets every batch once, in order
    assert [lookahead.position(batch) for batch in batches] == [None, None, None, 3, 4]  # the last `remember`


def test_a_position_belongs_to_the_batch_object_not_to_an_equal_one():
    first, equal = [{"row": 0}], [{"row": 0}]
    lookahead = Lookahead(iter([first]), remember=4)
    next(lookahead)
    assert lookahead.position(first) == 0 and lookahead.position(equal) is None


def test_the_generating_weights_are_swapped_in_and_back():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)  # frozen: not copied, never changes
    snapshot = snapshot_weights(model)
    assert snapshot[2] == (None, None)
    inputs = torch.randn(4, 3)
    before = model(inputs).detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    after = model(inputs).detach().clone()
    with weights_swapped(model, snapshot):
        assert torch.equal(model(inputs), before)
    assert torch.equal(model(inputs), after) and not torch.equal(before, after)
