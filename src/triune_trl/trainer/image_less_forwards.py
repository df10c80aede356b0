"""Forward passes of a Qwen-VL model that carry no image, in a run that mixes text-only and image rows.

Two problems, two hooks, both installed by `prepare_image_less_forwards` when the trainer is built:

1. Empty image tensors (every run). TRL cuts each generation batch into `steps_per_generation` micro-batches (and
   scores old log-probs in chunks of `per_device_train_batch_size`). A micro-batch or chunk whose rows are all
   text-only, cut from a batch that has images, reaches the model with `pixel_values` of 0 rows instead of None,
   and Qwen2.5-VL's vision tower fails on it (`ValueError: torch.cat(): expected a non-empty list of Tensors` in
   `get_vision_position_ids`). `EmptyImageGuard` turns 0-row image inputs into None, which is what a text-only
   batch has: the forward is then the text-only forward, value for value.

2. Vision gathers under ZeRO-3 and FSDP (2+ ranks only). DeepSpeed ZeRO-3 and FSDP gather each module's parameters
   collectively when the module runs (and reduce its gradients collectively when its backward runs), so all ranks
   must run the same modules in the same order. A Qwen-VL forward runs the vision tower only when it has images:
   a rank with a text-only micro-batch next to a rank with an image stops matching, and the job aborts (gloo:
   "Received data size doesn't match expected size", then "Connection reset by peer"; NCCL: a hang or a size
   mismatch). `VisionAlignment` makes a forward in which the vision tower did not run run it on a tiny dummy
   image at the point where a real image forward does (just before the language model, after the token
   embedding), tied in as `inputs_embeds + 0 * sum(features)`: backward then visits the vision tower in the same
   order as on an image rank, and every loss value and gradient stays exactly what it was (the text-only rank's
   vision gradient is exactly zero, which is also what DDP's all-reduce adds for it). Decoding steps (a non-empty
   KV cache) are left alone: no rank runs the vision tower there. Cost: one vision forward and backward over one
   image of 1 x m x m patches (m = spatial merge size: one merged token) per image-less forward pass. DDP needs
   none of this (TRL sets `ddp_find_unused_parameters`), nor do ZeRO-1/2 (whole parameters on every rank) or one
   process; there nothing is installed.

   Qwen3-VL (dense and MoE) also feeds vision features into the first decoder layers (deepstack): a real image
   forward passes `deepstack_visual_embeds` (one tensor per deepstack layer, one row per image token) and
   `visual_pos_masks` (where the image tokens are) to the language model, which adds each tensor to its layer's
   hidden states at those positions. The dummy mirrors that too: its deepstack features, times 0, go in through
   the same two arguments at one position of the batch, so backward reaches every deepstack merger through the
   same decoder layers as on an image rank, the hidden states stay value for value what they were (x + 0), and
   every vision parameter, deepstack mergers included, gets a gradient of exactly zero.

Written by hand: neither DeepSpeed, accelerate, TRL nor transformers pad modality-dependent forwards (DeepSpeed's
answer is "run the same modules on every rank", which is what this does).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)

VISION_ATTR = "visual"  # Qwen2-VL, Qwen2.5-VL (and Qwen3-VL): `model.model.visual` (transformers 5)
LANGUAGE_ATTR = "language_model"
# image / video inputs of a Qwen-VL forward: the pixels and their (t, h, w) patch grids
IMAGE_INPUTS = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))


def needs_vision_alignment(distributed_type, zero_stage: int | None, num_processes: int) -> bool:
    """Whether parameters are gathered per module across ranks: DeepSpeed ZeRO-3 or FSDP (any sharding), 2+ ranks.

    ZeRO-1/2 keep every parameter whole on every rank and fill the gradients a rank did not produce with zeros; DDP
    is covered by `ddp_find_unused_parameters`; a single process has nobody to disagree with.
    """
    kind = str(getattr(distributed_type, "value", distributed_type))
    if num_processes < 2:
        return False
    return (kind == "DEEPSPEED" and zero_stage == 3) or kind == "FSDP"


def floating_sum(output) -> torch.Tensor:
    """The sum of every floating-point tensor in a model output (tensor, tuple/list, ModelOutput or dict), in fp32."""
    if isinstance(output, torch.Tensor):
        return output.float().sum() if output.is_floating_point() else output.new_zeros((), dtype=torch.float32)
    if isinstance(output, Mapping):
        parts = list(output.values())
    elif isinstance(output, (tuple, list)):
        parts = list(output)
    else:
        parts = []
    sums = [floating_sum(part) for part in parts if isinstance(part, (torch.Tensor, Mapping, tuple, list))]
    if not sums:
        raise TypeError(f"the vision tower returned no tensor ({type(output).__name__}); cannot tie it into the graph")
    total = sums[0]
    for part in sums[1:]:
        total = total + part.to(total.device)
    return total


@dataclass
class VisionTower:
    """The vision tower of a Qwen-VL model, the language model it feeds, and their common parent."""

    parent: nn.Module
    vision: nn.Module
    language: nn.Module
    _cache: dict = field(default_factory=dict, repr=False)

    def dummy_image(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values, grid_thw) of the smallest image the processor could produce: 1 x m x m patches.

        The rows are flattened patches of `in_channels * temporal_patch_size * patch_size**2` values, as the Qwen-VL
        image processors write them; zeros, so every activation stays finite. Built once per device and dtype.
        """
        config = self.vision.config
        merge = int(config.spatial_merge_size)
        channels = int(getattr(config, "in_channels", getattr(config, "in_chans", 3)))
        width = channels * int(config.temporal_patch_size) * int(config.patch_size) ** 2
        dtype = self.vision_dtype()
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = (
                torch.zeros(merge * merge, width, dtype=dtype, device=device),
                torch.tensor([[1, merge, merge]], dtype=torch.long, device=device),
            )
        return self._cache[key]

    def vision_dtype(self) -> torch.dtype:
        """The vision tower's dtype (partitioned ZeRO-3 parameters are empty but keep it)."""
        dtype = getattr(self.vision, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return dtype
        return next(self.vision.parameters()).dtype

    def has_deepstack(self) -> bool:
        """Qwen3-VL: vision features also enter the language model at several decoder layers, not only the input."""
        return hasattr(self.vision, "deepstack_merger_list") or bool(
            getattr(self.vision.config, "deepstack_visual_indexes", None)
        )

    def features(self, device: torch.device):
        """Run the vision tower on the dummy image the way a real image forward does; return what that forward uses:
        `(merged image tokens, deepstack features or None)`.

        A real forward calls `get_image_features` and feeds only its `pooler_output` (the merged image tokens) and,
        for Qwen3-VL, its `deepstack_features` (one tensor per deepstack layer) to the language model. Only those may
        be tied into the graph: ZeRO-3 runs a module's backward hook once per output tensor that receives a gradient,
        and records (and compares across ranks) every such fetch, so tying in the unused `last_hidden_state` as well
        would make this rank's backward differ from an image rank's.
        """
        pixel_values, grid_thw = self.dummy_image(device)
        image_features = getattr(self.parent, "get_image_features", None)
        if image_features is not None:
            output = image_features(pixel_values, grid_thw)
        else:
            output = self.vision(pixel_values, grid_thw=grid_thw)
        if not isinstance(output, Mapping):
            return output, None
        pooled = output.get("pooler_output")
        deepstack = output.get("deepstack_features") or None
        return (pooled if pooled is not None else output), deepstack


def find_vision_tower(model: nn.Module) -> VisionTower | None:
    """The Qwen-VL vision tower anywhere inside `model` (through PEFT, DeepSpeed, DDP or FSDP wrappers), or None.

    Looks for the module holding both `visual` and `language_model` children (transformers 5's `Qwen*VLModel`),
    with a vision config that describes patches (`patch_size`, `temporal_patch_size`, `spatial_merge_size`).
    """
    for module in model.modules():
        vision = getattr(module, VISION_ATTR, None)
        language = getattr(module, LANGUAGE_ATTR, None)
        if not isinstance(vision, nn.Module) or not isinstance(language, nn.Module):
            continue
        config = getattr(vision, "config", None)
        if all(hasattr(config, name) for name in ("patch_size", "temporal_patch_size", "spatial_merge_size")):
            return VisionTower(parent=module, vision=vision, language=language)
    return None


def _is_empty(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.numel() == 0


def _is_decoding_step(kwargs: Mapping) -> bool:
    """A generation step after the prefill: the KV cache already holds tokens, and no rank runs the vision tower."""
    cache = kwargs.get("past_key_values")
    if cache is None or not hasattr(cache, "get_seq_length"):
        return False
    return int(cache.get_seq_length()) > 0


class _Hooks:
    """Handles of the forward hooks one object installed; `remove()` takes them all off."""

    _handles: list

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class EmptyImageGuard(_Hooks):
    """Turns 0-row image (and video) inputs into None before the Qwen-VL model sees them (problem 1 above)."""

    def __init__(self, tower: VisionTower) -> None:
        self.dropped = 0  # in this process: how many forwards had empty image inputs
        self._handles = [tower.parent.register_forward_pre_hook(self._drop_empty, with_kwargs=True, prepend=True)]

    def _drop_empty(self, module, args, kwargs):
        empty = [(pixels, grid) for pixels, grid in IMAGE_INPUTS if _is_empty(kwargs.get(pixels))]
        if not empty:
            return None
        kwargs = dict(kwargs)
        for pixels, grid in empty:
            if kwargs.get(grid) is not None and not _is_empty(kwargs[grid]):
                raise ValueError(f"{pixels} has no rows but {grid} lists {len(kwargs[grid])} images")
            kwargs[pixels] = None
            kwargs[grid] = None
        self.dropped += 1
        return args, kwargs


class VisionAlignment(_Hooks):
    """Runs the vision tower on a dummy image in every forward that would otherwise skip it (problem 2 above).

    Three forward pre-hooks: the parent's marks the start of a forward pass, the vision tower's records that it ran,
    and the language model's (put in front of every other hook on it, DeepSpeed's included, so the dummy runs where
    a real image forward runs the tower) runs the dummy when the tower did not run and ties its features into
    `inputs_embeds` with weight 0.
    """

    def __init__(self, tower: VisionTower) -> None:
        self.tower = tower
        self.dummy_forwards = 0  # in this process: how many forwards ran the dummy image
        self._vision_ran = False
        self._handles = [
            tower.parent.register_forward_pre_hook(self._forward_starts),
            tower.vision.register_forward_pre_hook(self._vision_runs),
            tower.language.register_forward_pre_hook(self._before_language_model, with_kwargs=True, prepend=True),
        ]

    def _forward_starts(self, module, args) -> None:
        self._vision_ran = False

    def _vision_runs(self, module, args) -> None:
        self._vision_ran = True

    def _before_language_model(self, module, args, kwargs):
        if self._vision_ran or _is_decoding_step(kwargs):
            self._vision_ran = False
            return None
        inputs_embeds = kwargs.get("inputs_embeds")
        device = inputs_embeds.device if isinstance(inputs_embeds, torch.Tensor) else self._device()
        if self.dummy_forwards == 0:
            logger.info(
                "a forward pass without images under ZeRO-3/FSDP: running the vision tower on a 1-token dummy image "
                "(weight 0) so that every rank gathers the same parameters"
            )
        self.dummy_forwards += 1
        pooled, deepstack = self.tower.features(device)
        tie = _zeroed(floating_sum(pooled))
        self._vision_ran = False
        if not isinstance(inputs_embeds, torch.Tensor):
            return None  # forward gathers now match; nothing to add the (zero) features to
        kwargs = {**kwargs, "inputs_embeds": inputs_embeds + tie.to(inputs_embeds.dtype)}
        if deepstack:
            kwargs.update(_deepstack_tie(inputs_embeds, deepstack))
        return args, kwargs

    def _device(self) -> torch.device:
        return next(self.tower.language.parameters()).device


def _zeroed(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor * 0`, with NaN and infinities made finite first (0 * inf is NaN): exactly zero, still in the graph."""
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0) * 0.0


def _deepstack_tie(inputs_embeds: torch.Tensor, deepstack: list[torch.Tensor]) -> dict:
    """The language model's deepstack arguments for the dummy image: its features times 0, at the last position of
    the first row (one merged token per feature tensor). Adding them leaves every hidden state as it was."""
    tokens = int(deepstack[0].shape[0])
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[1] < tokens:
        shape = tuple(inputs_embeds.shape)
        raise ValueError(f"cannot place {tokens} dummy deepstack token(s) in inputs_embeds of shape {shape}")
    mask = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
    mask[0, inputs_embeds.shape[1] - tokens :] = True
    embeds = [_zeroed(feature).to(inputs_embeds.device, inputs_embeds.dtype) for feature in deepstack]
    return {"visual_pos_masks": mask, "deepstack_visual_embeds": embeds}


def _tower_of(model: nn.Module) -> VisionTower:
    tower = find_vision_tower(model)
    if tower is None:
        raise ValueError(
            f"{type(model).__name__}: no Qwen-VL vision tower found (a module with `{VISION_ATTR}` and "
            f"`{LANGUAGE_ATTR}` children whose vision config has patch_size, temporal_patch_size, spatial_merge_size)"
        )
    return tower


def install_vision_alignment(model: nn.Module) -> VisionAlignment:
    """Hook `model` so that image-less forwards run its vision tower too. ValueError if it has none we recognise."""
    return VisionAlignment(_tower_of(model))


def install_empty_image_guard(model: nn.Module) -> EmptyImageGuard:
    """Hook `model` so that 0-row image inputs count as no images. ValueError if it has no vision tower."""
    return EmptyImageGuard(_tower_of(model))


def prepare_image_less_forwards(models, distributed_type, zero_stage: int | None, num_processes: int) -> list[_Hooks]:
    """Install the hooks each model (policy, reference; None skipped) with a Qwen-VL vision tower needs.

    `EmptyImageGuard` always; `VisionAlignment` only under ZeRO-3 / FSDP with 2+ processes. Returns what was
    installed (empty for text-only models).
    """
    align = needs_vision_alignment(distributed_type, zero_stage, num_processes)
    installed: list[_Hooks] = []
    for model in models:
        tower = find_vision_tower(model) if model is not None else None
        if tower is None:
            continue
        installed.append(EmptyImageGuard(tower))
        if align:
            installed.append(VisionAlignment(tower))
    if any(isinstance(hook, VisionAlignment) for hook in installed):
        logger.info(
            "%s over %d processes: forwards without images run the vision tower on a dummy image (weight 0)",
            "ZeRO-3" if str(getattr(distributed_type, "value", distributed_type)) == "DEEPSPEED" else "FSDP",
            num_processes,
        )
    return installed
