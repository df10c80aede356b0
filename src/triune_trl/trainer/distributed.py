"""Multi-process launches (`torchrun`, `accelerate launch`, DeepSpeed) on a host without an accelerator.

Why this module exists: on a CPU-only host, accelerate 1.15's `PartialState._prepare_backend` only considers the
launcher's ranks (`LOCAL_RANK`) when an accelerator is found or when `cpu=True` was asked for. Otherwise it returns
no backend, and accelerate quietly falls back to one process per rank:

- under DeepSpeed (`accelerate launch --config_file local_scripts/zero3.yaml`, or `--deepspeed ds.json`), each rank
  believes it is alone and DeepSpeed stops on `train_batch_size != micro_batch * grad_acc * world_size`;
- under plain DDP (`torchrun --nproc_per_node N` without `--use_cpu true`), each rank silently trains its own
  single-process copy of the run, all writing to the same output folder.

`apply_cpu_distributed_shim()` wraps `_prepare_backend` at run time (installed files are never edited) so that, when
no accelerator is present and the launcher started more than one rank, those ranks are treated as accelerate's own
`MULTI_CPU` type over gloo, exactly what `cpu=True` would have chosen. DeepSpeed then initialises its communication
over gloo and sees the real world size. The wrapper changes nothing when an accelerator is present, when a backend
was found, or in a single-process run. It must be applied before the first `PartialState` is created, which
`GRPOConfig.__post_init__` already does (it reads `world_size`): `triune_trl.runs.train.make_parser` applies it.

`check_world_size()` is the backstop: if the trainer's world size still differs from the launcher's `WORLD_SIZE`
(the shim was disabled, or a `GRPOConfig` was built before it was applied), the run stops with what to do instead of
training N independent copies.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

from ..errors import TriuneError

logger = logging.getLogger(__name__)

DISABLE_ENV = "TRIUNE_DISABLE_CPU_DISTRIBUTED_SHIM"
_MARKER = "_triune_cpu_ranks_shim"


class DistributedSetupError(TriuneError):
    """The processes of a multi-process launch do not form one job."""


def launcher_world_size() -> int:
    """The number of ranks the launcher (torchrun, accelerate launch, deepspeed, MPI) started; 1 when not launched."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value:
            return int(value)
    return 1


def accelerator_present() -> bool:
    """Whether torch sees any accelerator (CUDA, ROCm, XPU, MPS, ...); the shim is only for hosts without one."""
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None and hasattr(accelerator_api, "is_available"):
        return bool(accelerator_api.is_available())
    return torch.cuda.is_available()


def _cpu_ranks_backend(original):
    """Wrap `PartialState._prepare_backend`: launcher ranks without an accelerator become MULTI_CPU over gloo."""

    @functools.wraps(original)
    def prepare_backend(self, cpu: bool = False, sagemaker_dp: bool = False, backend: str | None = None):
        from accelerate.utils import DistributedType

        found_backend, distributed_type = original(self, cpu, sagemaker_dp, backend)
        launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 and launcher_world_size() > 1
        if distributed_type == DistributedType.NO and not cpu and launched and not accelerator_present():
            logger.info("no accelerator found: treating the %d launcher ranks as MULTI_CPU over gloo",
                        launcher_world_size())
            return "gloo", DistributedType.MULTI_CPU
        return found_backend, distributed_type

    setattr(prepare_backend, _MARKER, True)
    return prepare_backend


def apply_cpu_distributed_shim() -> bool:
    """Install the wrapper if this host has no accelerator; return whether it is installed. Idempotent.

    Set `TRIUNE_DISABLE_CPU_DISTRIBUTED_SHIM=1` to keep accelerate's own behaviour.
    """
    from accelerate.state import PartialState

    if getattr(PartialState._prepare_backend, _MARKER, False):
        return True
    if os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes") or accelerator_present():
        return False
    PartialState._prepare_backend = _cpu_ranks_backend(PartialState._prepare_backend)
    return True


def check_world_size(trainer_world_size: int) -> None:
    """Stop a launch whose ranks did not join one process group (each would train its own copy of the run)."""
    launched = launcher_world_size()
    if launched > 1 and trainer_world_size != launched:
        raise DistributedSetupError(
            f"started {launched} processes, trainer world size {trainer_world_size} (each would train alone): CPU: "
            f"--use_cpu true or `triune train` (unset {DISABLE_ENV}); GPU: make the GPUs visible"
        )
