"""The CPU-only multi-process shim and the world-size guard, on accelerate's real `PartialState` and GRPOConfig.

The end-to-end proof (two processes forming one job under DeepSpeed and DDP) is in test_scale_launch.py; these
tests pin the decisions: when the shim changes accelerate's choice, when it does not, and what the guard says.
"""

from __future__ import annotations

import pytest
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from trl import GRPOConfig

from triune_trl.trainer import distributed
from triune_trl.trainer.distributed import DistributedSetupError, apply_cpu_distributed_shim, check_world_size


def _original_prepare_backend():
    apply_cpu_distributed_shim()
    wrapped = PartialState._prepare_backend
    assert getattr(wrapped, distributed._MARKER, False), "the shim is installed on a host without accelerator"
    return wrapped, wrapped.__wrapped__


def _state() -> PartialState:
    return object.__new__(PartialState)  # _prepare_backend only reads the environment


def test_launcher_ranks_without_accelerator_become_multi_cpu_over_gloo(monkeypatch):
    wrapped, original = _original_prepare_backend()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    # accelerate alone: no backend, every rank would run alone (DeepSpeed then asserts on train_batch_size)
    assert original(_state(), False, False, None) == (None, DistributedType.NO)
    assert wrapped(_state(), False, False, None) == ("gloo", DistributedType.MULTI_CPU)


def test_the_shim_leaves_single_processes_and_use_cpu_alone(monkeypatch):
    wrapped, original = _original_prepare_backend()
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert wrapped(_state(), False, False, None) == original(_state(), False, False, None) == (
        None, DistributedType.NO
    )
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert wrapped(_state(), True, False, None) == original(_state(), True, False, None)  # use_cpu: already gloo


def test_applying_the_shim_twice_wraps_once():
    assert apply_cpu_distributed_shim() and apply_cpu_distributed_shim()
    assert not hasattr(PartialState._prepare_backend.__wrapped__, "__wrapped__")


def test_the_guard_stops_a_launch_whose_ranks_each_run_alone(monkeypatch, tmp_path):
    # WORLD_SIZE from a launcher, but no LOCAL_RANK and use_cpu off: accelerate builds a 1-process state, which is
    # what each rank of `torchrun --nproc_per_node 2` gets on a CPU host without the shim.
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=False, bf16=False, report_to="none")
    assert args.world_size == 1
    with pytest.raises(DistributedSetupError, match=r"started 2 processes, trainer world size 1 .*--use_cpu true"):
        check_world_size(args.world_size)


def test_the_guard_accepts_matching_world_sizes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world_size(2)
    monkeypatch.delenv("WORLD_SIZE")
    check_world_size(1)
