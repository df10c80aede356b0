"""Fused MoE expert tensors in the layout released checkpoints (and vLLM's loaders) use, not transformers' own.

Why this module exists: transformers 5 keeps some models' fused expert weights in a different layout in memory
than their released checkpoints hold, and converts when it loads (`transformers.conversion_mapping`). For
Qwen3-VL-MoE that conversion is a transpose of the last two dimensions: released checkpoints (and vLLM's
`Qwen3VLMoeForConditionalGeneration`, which always transposes them back, `is_fused_checkpoint_transposed`) hold
`experts.gate_up_proj` as (E, hidden, 2 x intermediate) and `experts.down_proj` as (E, intermediate, hidden), while
the transformers model holds (E, 2 x intermediate, hidden) and (E, hidden, intermediate). Two things break:

- the weight sync. TRL hands vLLM the trainer's parameters as they are in memory (`VLLMGeneration._iter_named_params`,
  used by colocate mode on every platform, by server mode and by our CPU and HTTP syncs alike), so vLLM transposes
  an already-transposed tensor: the first sync fails in `_load_w13` / `_load_w2` (shape mismatch), or, when
  2 x intermediate equals hidden, silently loads the wrong matrix. `released_layout_iterator` wraps that iterator
  and undoes transformers' load-time transposes, tensor by tensor (one gathered parameter at a time, as before);
- saved checkpoints. transformers 5.17's `save_pretrained` reverts the transpose only when the shapes differ from
  the model's (`Transpose(check_dims=True)`), which they never do at save time, so it writes its in-memory layout,
  and vLLM cannot start from the folder (`RuntimeError: The size of tensor a (64) must match the size of tensor b
  (128)` in `_load_w2`). `write_released_layout(folder)` rewrites a saved folder's fused experts in the released
  layout; transformers still loads it (its `check_dims` transposes what does not match), except when the tensor is
  square (2 x intermediate = hidden), where it cannot tell the layouts apart: avoid those sizes.

Which tensors: exactly those the model's own transformers conversion mapping transposes in place (a
`WeightConverter` whose operations are all `Transpose` and whose source and target patterns are the same), so a
model transformers does not transpose (Qwen2.5-VL, Qwen3-VL, Qwen3.5 dense and MoE: Qwen3.5-MoE's fusion of
per-expert tensors is read by vLLM in its fused form) passes through untouched, and nothing is done at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

Rule = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Transposes:
    """One in-place transpose conversion of transformers: which names it applies to, and its dimension pairs."""

    patterns: tuple[re.Pattern, ...]
    scope_prefix: str | None
    dims: tuple[tuple[int, int], ...]  # load-direction (dim0, dim1) pairs, in the order transformers applies them

    def matches(self, name: str) -> bool:
        if self.scope_prefix and f"{self.scope_prefix}." not in name:
            return False
        return any(pattern.search(name) for pattern in self.patterns)

    def to_released(self, tensor: torch.Tensor) -> torch.Tensor:
        for dim0, dim1 in reversed(self.dims):
            tensor = tensor.transpose(dim0, dim1)
        return tensor.contiguous()


def _load_time_transposes(model: nn.Module) -> list[_Transposes]:
    """The in-place transposes transformers' conversion mapping applies to `model`'s weights when it loads them."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import Transpose, WeightConverter
    except ImportError:  # a transformers without conversion mappings keeps the released layout in memory
        return []
    found = []
    for transform in get_model_conversion_mapping(model, add_legacy=False):
        operations = getattr(transform, "operations", None)
        if not isinstance(transform, WeightConverter) or not operations:
            continue
        if not all(isinstance(op, Transpose) for op in operations):
            continue
        if list(transform.source_patterns) != list(transform.target_patterns):
            continue
        found.append(
            _Transposes(
                patterns=tuple(re.compile(pattern) for pattern in transform.target_patterns),
                scope_prefix=transform.scope_prefix,
                dims=tuple((op.dim0, op.dim1) for op in operations),
            )
        )
    return found


def released_layout(model: nn.Module) -> Rule | None:
    """`(name, tensor) -> tensor` in the released checkpoint layout, or None when `model` keeps that layout already.

    `model` may be wrapped (PEFT, DeepSpeed): transformers' mapping is looked up on the model classes inside it.
    """
    transposes = _load_time_transposes(model)
    if not transposes:
        return None

    def to_released(name: str, tensor: torch.Tensor) -> torch.Tensor:
        for transpose in transposes:
            if transpose.matches(name):
                return transpose.to_released(tensor)
        return tensor

    return to_released


def released_layout_iterator(
    named_tensors: Iterable[tuple[str, torch.Tensor]], rule: Rule
) -> Iterator[tuple[str, torch.Tensor]]:
    """The same (name, tensor) stream, each tensor in the released layout; lazy, like the stream it wraps."""
    for name, tensor in named_tensors:
        yield name, rule(name, tensor)


def send_released_layout(vllm_generation, model: nn.Module) -> bool:
    """Make TRL's `VLLMGeneration` hand vLLM the released layout (every sync path reads `_iter_named_params`).

    Returns whether anything needed changing (False: the model keeps the released layout in memory)."""
    rule = released_layout(model)
    if rule is None:
        return False
    in_memory = vllm_generation._iter_named_params

    def iter_named_params():
        return released_layout_iterator(in_memory(), rule)

    vllm_generation._iter_named_params = iter_named_params
    return True


@contextmanager
def _without_zero3_init():
    """Build a model skeleton as if DeepSpeed were not configured: at the end of a ZeRO-3 run transformers would
    wrap `from_config` in `deepspeed.zero.Init`, which cannot partition `init_empty_weights`' meta tensors
    ("Cannot copy out of meta tensor"). The run's DeepSpeed config is set back afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    active = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None:
            hf_deepspeed.set_hf_deepspeed_config(active)


def _saved_model_class(folder: Path) -> type[nn.Module]:
    """The transformers class of the model saved in `folder`: its `architectures` entry, else transformers' own
    image-text-to-text class for its `model_type`.

    Why not `AutoConfig`: the class `AutoConfig` resolves a `model_type` to can be replaced in a running process. vLLM's
    config parser registers its own `Qwen3_5Config` / `Qwen3_5MoeConfig` for `qwen3_5` / `qwen3_5_moe`
    (`AutoConfig.register(..., exist_ok=True)`) when an engine starts, so after a colocate run the folder's config
    came back as vLLM's class, whose vision config lacks transformers' `num_attention_heads` alias, and building the
    transformers model from it failed. Looked up by name in transformers, the class and its `config_class` are always
    transformers' own."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    saved = json.loads((folder / "config.json").read_text())
    by_type = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(saved.get("model_type"))
    names = [*(saved.get("architectures") or []), by_type]
    for name in filter(None, names):
        model_class = getattr(transformers, name, None)
        if isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel):
            return model_class
    raise ValueError(
        f"{folder / 'config.json'}: no transformers model class for architectures {saved.get('architectures')} "
        f"or model_type {saved.get('model_type')!r}"
    )


def _empty_model(folder: Path) -> nn.Module:
    """The model saved in `folder` with its parameters on the meta device: its module names and shapes, no memory."""
    from accelerate import init_empty_weights

    model_class = _saved_model_class(folder)
    config = model_class.config_class.from_pretrained(folder)
    with init_empty_weights(), _without_zero3_init():
        return model_class(config)


def write_released_layout(folder: str | Path) -> list[str]:
    """Rewrite the fused experts of a model saved by transformers in `folder` in the released layout, in place.

    Returns the names of the tensors rewritten ([] for a model transformers keeps in the released layout). A tensor
    already in the released layout is left alone (the folder may have been rewritten before). Safe to call in a
    process where vLLM runs (`_saved_model_class`)."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    model = _empty_model(folder)
    rule = released_layout(model)
    if rule is None:
        return []
    shapes = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    rewritten = []
    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(path)
        changed = False
        for name, tensor in tensors.items():
            released = rule(name, tensor)
            if released is tensor or tuple(tensor.shape) != shapes.get(name) or tensor.ndim < 2:
                continue
            if tensor.shape[-1] == tensor.shape[-2]:
                raise ValueError(
                    f"{path}: {name} is square {tuple(tensor.shape)}: transformers could not tell its layouts apart "
                    "when loading it back; choose sizes with 2 x moe_intermediate_size != hidden_size"
                )
            tensors[name] = released
            rewritten.append(name)
            changed = True
        if changed:
            with open(path, "rb") as handle:  # keep the header's metadata ({"format": "pt"})
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            save_file(tensors, path, metadata=header.get("__metadata__"))
    return rewritten
