"""The `triune_http` weight-transfer backend: the trainer's weights reach a vLLM server in HTTP request bodies.

Why. TRL 1.16's server mode pushes the trainer's weights to `vllm serve` with vLLM's NCCL weight-transfer engine,
and every backend vLLM 0.31 ships (nccl, ipc, sparse_nccl, sharded_rdt, nccl_m2n) needs CUDA: on a CPU host the
trainer stops in `init_communicator` (NotImplementedError). vLLM's backends are a registry
(`WeightTransferEngineFactory.register_engine`) that every vLLM process fills through the `vllm.general_plugins`
entry point; setup.py points that entry point at `register` below, so a server started with
`--weight-transfer-config '{"backend": "triune_http"}'` (what `triune vllm-serve` passes on a host without CUDA)
accepts this transport on the same `/init_weight_transfer_engine`, `/start_weight_update`, `/update_weights`,
`/finish_weight_update` routes TRL already calls. The trainer side is `triune_trl.generation.client`.

The wire. Each `/update_weights` request carries a chunk of tensors in its JSON body: names, vLLM dtype names,
shapes and each tensor's raw bytes in base64 (4 bytes of text for 3 of tensor: the body is 1.33 x the tensor bytes,
plus a few dozen bytes of names per tensor). A sync sends every weight once, in checkpoint format (TRL's own
parameter iterator: PEFT merged, ZeRO-3 gathered one parameter at a time), chunked so that no request body holds
much more than `chunk_bytes` (a single larger tensor travels alone). It is meant for CPU hosts and small models:
a 7B model in bf16 is ~15 GB of tensors, ~20 GB of JSON per step; on GPUs keep NCCL (the default there).

The server side (`HTTPWeightTransferEngine`, in the vLLM worker) feeds the decoded tensors to `model.load_weights`
inside vLLM's layerwise reload (`initialize_layerwise_reload` at start, `finalize_layerwise_reload` at finish: the
CPU backend's repacked oneDNN linear layers are restored to checkpoint layout, loaded, and repacked), with no
accelerator synchronize (the CPU platform has none), then runs `vllm_cpu_sync.finish_weight_reload`: it refreshes
an output layer tied to the embeddings, whose packed copy the reload leaves stale (measured gap 0.26 without it), and
re-prepacks CPU fused-MoE experts.
The prefix and encoder caches are reset by the client after the sync, over HTTP (the encoder cache's record lives
in the engine core's scheduler, which a worker cannot reach).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

logger = logging.getLogger(__name__)

BACKEND = "triune_http"
PROTOCOL = 1  # bumped when the wire format changes; the trainer sends it at init, the server refuses a mismatch
DEFAULT_CHUNK_BYTES = 64 * 2**20  # raw tensor bytes per request (the body is ~1.33 x this)


def register() -> None:
    """The `vllm.general_plugins` entry point: make `triune_http` a weight-transfer backend of this process.

    vLLM calls it once per process (API server, engine core, workers, and the trainer's colocated engine); it must
    never raise, or that process's plugin loading would stop."""
    try:
        from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

        WeightTransferEngineFactory.register_engine(BACKEND, HTTPWeightTransferEngine)
    except ValueError:  # already registered in this process
        pass
    except Exception:  # noqa: BLE001 - a vLLM without the registry: the backend is just not there
        logger.exception("triune-trl: could not register the %s weight-transfer backend", BACKEND)


# --- the wire format -------------------------------------------------------------------------------------------------


def encode_tensor(tensor: torch.Tensor) -> str:
    """A tensor's raw bytes (native byte order, C order), as base64 text."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return base64.b64encode(flat.view(torch.uint8).numpy().tobytes()).decode("ascii")


def decode_tensor(text: str, dtype_name: str, shape: list[int]) -> torch.Tensor:
    """The tensor `encode_tensor` encoded; `dtype_name` is vLLM style ("bfloat16", "float32")."""
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype_name!r}")
    raw = base64.b64decode(text)
    count = 1
    for size in shape:
        count *= size
    expected = count * torch.empty((), dtype=dtype).element_size()
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes for a {dtype_name} tensor of shape {shape} ({expected} expected)")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def update_chunks(
    named_tensors: Iterable[tuple[str, torch.Tensor]], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tuple[dict, int]]:
    """`update_info` payloads of at most `chunk_bytes` raw tensor bytes each (a larger tensor travels alone), and
    each one's raw byte count.

    Tensors are encoded as the iterator yields them, so at most one chunk is held in memory (TRL's iterator under
    ZeRO-3 gathers one parameter at a time): a request body stays under ~1.34 x max(chunk_bytes, largest tensor)."""
    chunk: dict[str, list] = {"names": [], "dtype_names": [], "shapes": [], "data": []}
    size = 0
    for name, tensor in named_tensors:
        tensor_bytes = tensor.numel() * tensor.element_size()
        if chunk["names"] and size + tensor_bytes > chunk_bytes:
            yield chunk, size
            chunk, size = {key: [] for key in chunk}, 0
        chunk["names"].append(name)
        chunk["dtype_names"].append(str(tensor.dtype).removeprefix("torch."))
        chunk["shapes"].append(list(tensor.shape))
        chunk["data"].append(encode_tensor(tensor))
        size += tensor_bytes
    if chunk["names"]:
        yield chunk, size


# --- the vLLM side -------------------------------------------------------------------------------------------------


@dataclass
class HTTPInitInfo(WeightTransferInitInfo):
    """What the trainer sends to `/init_weight_transfer_engine`: the wire protocol it speaks."""

    protocol: int = PROTOCOL


@dataclass
class HTTPUpdateInfo(WeightTransferUpdateInfo):
    """One `/update_weights` chunk: parallel lists of names, dtypes, shapes and base64 tensor bytes."""

    names: list[str] = field(default_factory=list)
    dtype_names: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    data: list[str] = field(default_factory=list)

    def __post_init__(self):
        lengths = {len(self.names), len(self.dtype_names), len(self.shapes), len(self.data)}
        if len(lengths) != 1:
            raise ValueError(
                f"names, dtype_names, shapes and data must have one entry per tensor: got {len(self.names)}, "
                f"{len(self.dtype_names)}, {len(self.shapes)}, {len(self.data)}"
            )

    def tensors(self) -> list[tuple[str, torch.Tensor]]:
        return [
            (name, decode_tensor(text, dtype_name, shape))
            for name, dtype_name, shape, text in zip(self.names, self.dtype_names, self.shapes, self.data, strict=True)
        ]


class HTTPWeightTransferEngine(WeightTransferEngine[HTTPInitInfo, HTTPUpdateInfo]):
    """vLLM worker side of `triune_http`: checkpoint-format tensors from the request body into the model."""

    init_info_cls = HTTPInitInfo
    update_info_cls = HTTPUpdateInfo
    supports_draft_weight_update = False  # not tested: a speculative draft model keeps its weights

    def init_transfer_engine(self, init_info: HTTPInitInfo) -> None:
        """Nothing to connect (the weights come in request bodies): only check that both sides speak one protocol."""
        if init_info.protocol != PROTOCOL:
            raise ValueError(
                f"the trainer speaks {BACKEND} protocol {init_info.protocol}, this server {PROTOCOL}: install the "
                "same triune-trl on both sides"
            )

    def start_weight_update(self) -> None:
        """Open vLLM's layerwise reload (restores packed layers to checkpoint layout for `load_weights`)."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict) -> None:
        """One chunk of a sync, loaded before the request is answered."""
        self.receive_weights(self.parse_update_info(update_info))
        if torch.accelerator.is_available():  # a GPU server on this backend: the copies are done before we answer
            torch.accelerator.synchronize()

    def receive_weights(self, update_info: HTTPUpdateInfo) -> None:
        """The chunk's decoded tensors through the model's own checkpoint loader (names, fusions, TP shards)."""
        self.model.load_weights(update_info.tensors())

    def finish_weight_update(self) -> None:
        """Close the reload (repack), then what it leaves stale: a tied output layer, CPU fused-MoE experts."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        from .cpu_sync import finish_weight_reload

        finalize_layerwise_reload(self.model, self.model_config)
        finish_weight_reload(self.model)  # tied output layer, CPU fused-MoE experts

    def shutdown(self) -> None:
        pass
