"""Tiny, random-init Qwen vision-language models built entirely offline: Qwen2.5-VL, Qwen3-VL (dense, MoE), Qwen3.5
(dense, MoE).

Why: tests and the CPU demo need the *real* code paths of each model family (processor, chat template, mRoPE,
vision tower, deepstack, gated-delta-net linear attention, fused MoE experts, TRL's VLM handling) without downloading
anything from the Hub. Everything here is the stock transformers classes at toy sizes: a byte-level BPE tokenizer
trained on local text and wrapped as `Qwen2Tokenizer` with Qwen's special tokens, the stock `Qwen2VLImageProcessor`
and the family's video processor and processor class, TRL's copy of the family's chat template, and the family's
`...ForConditionalGeneration` from a small config.

What differs per family is what a real checkpoint of it ships: Qwen2.5-VL sees 14 px patches merged 2 x 2 (28 px
per token) normalised with CLIP's mean/std; Qwen3-VL and Qwen3.5 see 16 px patches merged 2 x 2 (32 px per token)
normalised with mean/std 0.5. Image sizes are given in tokens (`TinySpec.min_pixels`/`max_pixels` are in
Qwen2.5-VL's 28 px units), so an image becomes the same number of tokens whatever the family.

The result reloads with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# Qwen's special tokens, in Qwen's order. `<|endoftext|>` doubles as pad token, `<|im_end|>` ends a turn.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Tags the demo tasks and V-Triune prompts use. They are *ordinary* added tokens (not special): TRL decodes with
# `skip_special_tokens=True`, so a special tag would vanish from completions before the verifiers see it.
TASK_TAGS = ("<ok>", "<think>", "</think>", "<answer>", "</answer>")

# Pixels per merged vision token side in Qwen2.5-VL (patch 14 x merge 2): the unit of TinySpec's pixel bounds.
_SPEC_TOKEN_SIDE = 28


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults give ~0.6M parameters: a GRPO step on CPU takes a fraction of a second.

    Attention heads are 32 wide (text and vision): vLLM's CPU attention supports head sizes 32, 64, 80, ... only,
    so a smaller head would keep the tiny model off the vLLM generation path that the tests run. Qwen3.5's linear
    attention (gated delta net) heads are `linear_head_dim` wide: vLLM-CPU's kernel takes 64 or 128 only.
    """

    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vision_hidden_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    # The processor resizes every image into [min_pixels, max_pixels]: 4 to 16 merged vision tokens per image.
    # In Qwen2.5-VL's 28 px tokens; families with 32 px tokens scale both bounds to the same token counts.
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 16
    seed: int = 0
    # Also train the BPE on the bundled sample set's prompts and answers and on the release's CoT instructions,
    # so that those prompts take a few dozen tokens instead of hundreds (sequence length is the cost on a CPU).
    prompt_corpus: bool = False
    # MoE families: experts per MoE layer, experts per token, and each expert's (and Qwen3.5's shared expert's)
    # intermediate size.
    num_experts: int = 4
    num_experts_per_tok: int = 2
    # 32: 2 x 32 != hidden_size, so Qwen3-VL-MoE's fused gate_up_proj is not square (transformers tells its saved and
    # in-memory layouts apart by shape) and vLLM's CPU MoE kernel pads nothing (it aligns to 32).
    moe_intermediate_size: int = 32
    # Qwen3.5 linear-attention (gated delta net) heads: key heads, value heads (2 x key heads, as released), width.
    linear_num_key_heads: int = 2
    linear_num_value_heads: int = 4
    linear_head_dim: int = 64
    # Qwen2.5-VL's text RoPE base and mRoPE (temporal, height, width) split of the rotary half-dimension; None: the
    # default split (_mrope_section). Qwen2.5-VL gives height and width the *lowest* frequencies: at base 10000 and
    # 32-wide heads a 4 x 4 image's columns rotate by at most 0.005 rad, so the model cannot tell cells apart (the
    # vision tower has no absolute position: issue 19, benchmarks/results/see_pretrain.md).
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] | None = None


# The learning demo's model (`triune tiny-model OUT --preset learn`, `make learn`): 1.9M parameters, 64 merged
# vision tokens per image (224 x 224 pixels as the model sees it, so the sample's 44 px shapes span 2 x 2 tokens)
# and a BPE that knows the task prompts. Sized for a CPU budget of minutes; whether it learns the sample tasks from
# pixels in that budget is measured in benchmarks/results/learning.md (not yet). Heads stay 32 wide (vLLM's CPU
# attention).
LEARN_SPEC = TinySpec(
    vocab_size=2048,
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=384,
    vision_hidden_size=128,
    vision_depth=2,
    vision_heads=4,
    min_pixels=28 * 28 * 64,
    max_pixels=28 * 28 * 64,
    prompt_corpus=True,
)
# The learning demo's model since issue 19 (`triune tiny-model OUT --preset see`, `make pretrain`): the learn sizes
# with 112 px images, 16 merged vision tokens: each 56 px cell of make-sample's 4 x 4 grid is exactly one token.
# Text RoPE base 4 with mRoPE split (2, 7, 7): the image tokens' (row, column) positions rotate 14 of the 16
# rotary pairs by 0.27-0.6 rad per cell, so the model can say *where* an object is (a one-object "which cell"
# probe: chance at base 10000 / split (6, 5, 5), 100% after 800 steps with this; see_pretrain.md).
SEE_SPEC = replace(
    LEARN_SPEC, min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 16, rope_theta=4.0, mrope_section=(2, 7, 7)
)
PRESETS: dict[str, TinySpec] = {"test": TinySpec(), "learn": LEARN_SPEC, "see": SEE_SPEC}


def _corpus(seed: int, prompt_corpus: bool = False) -> list[str]:
    """Local text the BPE is trained on: the words, numbers, LaTeX and JSON the bundled tasks use."""
    rng = random.Random(seed)
    words = (
        "the a an of to in is what which how many answer question image picture chart bar value shape shapes "
        "red green blue yellow purple orange black white circle square triangle object objects detect find "
        "locate count number word written text science option choose correct puzzle panel left right top bottom "
        "please think step by step reason put final inside boxed reply with tag label bbox first then output json "
        "format coordinates total more less largest smallest sum plus minus equals yes no and or"
    ).split()
    lines = []
    for _ in range(3000):
        n = rng.randint(4, 16)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        x1, y1 = rng.randint(0, 900), rng.randint(0, 900)
        box = {"bbox_2d": [x1, y1, x1 + rng.randint(10, 99), y1 + rng.randint(10, 99)], "label": rng.choice(words)}
        lines.append(sentence.capitalize() + "?")
        lines.append(f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.")
        lines.append(f"<think>\n{sentence}\n</think>\n<answer>\n\\boxed{{{a}}}\n</answer>")
        lines.append("<answer>\n" + json.dumps([box]) + "\n</answer>")
        lines.append("Reply with the tag <ok> and nothing else. <ok>")
    if prompt_corpus:
        lines += _prompt_corpus(seed)
    return lines


def _prompt_corpus(seed: int, per_source: int = 200) -> list[str]:
    """Prompts (with their CoT instructions) and gold answers of the bundled sample tasks, as BPE training text."""
    from ..data.cot_prompts import CLOSE_FORM_FIRST, CLOSE_FORM_SECOND, FREE_FORM_FIRST, FREE_FORM_SECOND
    from ..data.make_sample import SAMPLE_SOURCES, SHAPE_COLOURS, SHAPES

    rng = random.Random(seed)
    lines = [*CLOSE_FORM_FIRST, *CLOSE_FORM_SECOND, *FREE_FORM_FIRST, *FREE_FORM_SECOND]
    for source in SAMPLE_SOURCES:
        for _ in range(per_source):
            example = source.build(rng)
            lines += [example.question, example.ground_truth, example.answer, example.reasoning]
    # The staged pretraining's descriptions and cell questions (triune_trl.runs.pretrain): "c3 red circle", "cell 7".
    lines += [f"c{cell} {colour} {shape}, cell {cell}" for cell in range(1, 17) for colour in SHAPE_COLOURS
              for shape in SHAPES]
    lines += ["List every object in the image with its cell.", "What is in cell 7?", "Is the object in cell 7 red?"]
    return lines


def build_tokenizer(spec: TinySpec = TinySpec()):
    """Train a byte-level BPE on the local corpus and wrap it as the stock `Qwen2Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - len(QWEN_SPECIAL_TOKENS) - len(TASK_TAGS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(spec.seed, spec.prompt_corpus), trainer=trainer)

    from transformers import Qwen2Tokenizer

    fast = PreTrainedTokenizerFast(tokenizer_object=bpe)
    fast.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t in TASK_TAGS])
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=fast.backend_tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        errors="replace",
        model_max_length=32768,
    )
    return tokenizer


@dataclass(frozen=True)
class Family:
    """What a model family's tiny model takes from its released checkpoints: vision patching, normalisation,
    chat template, and the config/model classes (built by `config_builder`)."""

    name: str
    patch_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    chat_template: str  # attribute name in trl.chat_template_utils
    processor_class: str
    video_processor: str  # "module:Class" under transformers.models
    model_class: str
    config_builder: Callable[[Any, TinySpec], Any]
    merge_size: int = 2

    @property
    def token_side(self) -> int:
        """Pixels per side of one merged vision token: patch_size x merge_size."""
        return self.patch_size * self.merge_size

    def image_sizing(self):
        """The family's image sizing without loading a processor: its patching (28 or 32 px per token) with the
        default bounds in tokens (4 to 1280). A checkpoint's own bounds need its processor."""
        from ..data.images import ImageSizing

        return ImageSizing.for_token_side(self.token_side)


_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)


def _mrope_section(rotary_dim: int) -> list[int]:
    """mRoPE's (temporal, height, width) split of the rotary half-dimension, temporal taking the remainder."""
    half = rotary_dim // 2
    return [half - 2 * (half // 3), half // 3, half // 3]


def _token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}


def special_token_ids(tokenizer) -> dict[str, int | None]:
    """The BOS / EOS / PAD ids the model config, its text config and its generation config all take: the
    tokenizer's own (BOS None: Qwen's tokenizer has none and prepends nothing).

    Why: `Trainer` compares the top-level config and the generation config with the tokenizer
    (`transformers.trainer_utils.align_special_tokens`) and, on any difference, rewrites them and prints a
    300-character warning on every run."""
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _generation_ids(tokenizer) -> dict[str, Any]:
    """The generation config's ids: the tokenizer's, stopping at the end of a turn (its EOS) or of a document, as
    Qwen's released generation configs do."""
    ids = special_token_ids(tokenizer)
    return {**ids, "eos_token_id": [ids["eos_token_id"], tokenizer.convert_tokens_to_ids("<|endoftext|>")]}


def _text_common(tokenizer, spec: TinySpec) -> dict[str, Any]:
    """Text-config entries every family shares: sizes, heads, special-token ids, tied embeddings."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": 4096,
        **special_token_ids(tokenizer),
        "tie_word_embeddings": True,
    }


def _top_level_ids(tokenizer) -> dict[str, int]:
    ids = _token_ids(tokenizer)
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }


def _qwen3_vision(spec: TinySpec, deepstack: bool) -> dict[str, Any]:
    """Qwen3-VL / Qwen3.5 vision tower: 16 px patches, learned position embeddings (a 16 x 16 grid, interpolated)."""
    vision = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": 2 * spec.vision_hidden_size,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,  # the merger projects straight into the LLM's hidden size
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 256,
    }
    if deepstack:
        # Deepstack: features of these vision layers are added to the first LLM layers' hidden states.
        vision["deepstack_visual_indexes"] = list(range(min(spec.vision_depth, spec.num_layers)))
    return vision


def _qwen2_5_vl_config(tokenizer, spec: TinySpec):
    from transformers import Qwen2_5_VLConfig

    head_dim = spec.hidden_size // spec.num_heads
    text_config = {
        **_text_common(tokenizer, spec),
        "intermediate_size": spec.intermediate_size,
        "max_window_layers": spec.num_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": spec.rope_theta,
            "mrope_section": list(spec.mrope_section or _mrope_section(head_dim)),
        },
    }
    vision_config = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": 2 * spec.vision_hidden_size,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,  # the merger projects straight into the LLM's hidden size
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [spec.vision_depth - 1],
    }
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **_top_level_ids(tokenizer))


def _qwen3_vl_text(tokenizer, spec: TinySpec) -> dict[str, Any]:
    head_dim = spec.hidden_size // spec.num_heads
    return {
        **_text_common(tokenizer, spec),
        "head_dim": head_dim,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": _mrope_section(head_dim),
            "mrope_interleaved": True,
        },
    }


def _moe_text(spec: TinySpec) -> dict[str, Any]:
    """The routed-expert keys both MoE families share."""
    return {
        "moe_intermediate_size": spec.moe_intermediate_size,
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.num_experts_per_tok,
        # transformers' router always renormalises the top-k weights; vLLM's reads this flag (released configs set it)
        "norm_topk_prob": True,
    }


def _qwen3_vl_config(tokenizer, spec: TinySpec):
    from transformers import Qwen3VLConfig

    text_config = {**_qwen3_vl_text(tokenizer, spec), "intermediate_size": spec.intermediate_size}
    return Qwen3VLConfig(
        text_config=text_config, vision_config=_qwen3_vision(spec, deepstack=True), **_top_level_ids(tokenizer)
    )


def _qwen3_vl_moe_config(tokenizer, spec: TinySpec):
    from transformers import Qwen3VLMoeConfig

    text_config = {
        **_qwen3_vl_text(tokenizer, spec),
        **_moe_text(spec),
        "intermediate_size": spec.intermediate_size,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
    return Qwen3VLMoeConfig(
        text_config=text_config, vision_config=_qwen3_vision(spec, deepstack=True), **_top_level_ids(tokenizer)
    )


def _qwen3_5_text(tokenizer, spec: TinySpec) -> dict[str, Any]:
    """Qwen3.5's hybrid decoder: gated-delta-net linear attention, with full attention every 4th layer (as
    released) but at least once, so that a 2-layer model has one layer of each kind."""
    head_dim = spec.hidden_size // spec.num_heads
    partial_rotary_factor = 0.25  # as released: rotary on a quarter of each full-attention head
    layer_types = ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(spec.num_layers)]
    layer_types[-1] = "full_attention"
    return {
        **_text_common(tokenizer, spec),
        "head_dim": head_dim,
        "layer_types": layer_types,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": spec.linear_head_dim,
        "linear_value_head_dim": spec.linear_head_dim,
        "linear_num_key_heads": spec.linear_num_key_heads,
        "linear_num_value_heads": spec.linear_num_value_heads,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": partial_rotary_factor,
            "mrope_section": _mrope_section(int(head_dim * partial_rotary_factor)),
            "mrope_interleaved": True,
        },
    }


def _qwen3_5_config(tokenizer, spec: TinySpec):
    from transformers import Qwen3_5Config

    text_config = {**_qwen3_5_text(tokenizer, spec), "intermediate_size": spec.intermediate_size}
    return Qwen3_5Config(
        text_config=text_config, vision_config=_qwen3_vision(spec, deepstack=False), **_top_level_ids(tokenizer)
    )


def _qwen3_5_moe_config(tokenizer, spec: TinySpec):
    from transformers import Qwen3_5MoeConfig

    text_config = {
        **_qwen3_5_text(tokenizer, spec),
        **_moe_text(spec),
        "shared_expert_intermediate_size": spec.moe_intermediate_size,
    }
    return Qwen3_5MoeConfig(
        text_config=text_config, vision_config=_qwen3_vision(spec, deepstack=False), **_top_level_ids(tokenizer)
    )


_QWEN3_VIDEO = "qwen3_vl.video_processing_qwen3_vl:Qwen3VLVideoProcessor"

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "qwen2.5-vl", 14, _CLIP_MEAN, _CLIP_STD, "qwen2_5_vl_chat_template", "Qwen2_5_VLProcessor",
            "qwen2_vl.video_processing_qwen2_vl:Qwen2VLVideoProcessor", "Qwen2_5_VLForConditionalGeneration",
            _qwen2_5_vl_config,
        ),
        Family(
            "qwen3-vl", 16, _HALF, _HALF, "qwen3_vl_chat_template", "Qwen3VLProcessor", _QWEN3_VIDEO,
            "Qwen3VLForConditionalGeneration", _qwen3_vl_config,
        ),
        Family(
            "qwen3-vl-moe", 16, _HALF, _HALF, "qwen3_vl_chat_template", "Qwen3VLProcessor", _QWEN3_VIDEO,
            "Qwen3VLMoeForConditionalGeneration", _qwen3_vl_moe_config,
        ),
        # Qwen3.5-4B and larger ship the template that pre-fills `<think>\n` in the generation prompt (TRL's
        # `qwen3_5_think`); the tiny models use it so that the pre-fill handling of the format reward is exercised.
        Family(
            "qwen3.5", 16, _HALF, _HALF, "qwen3_5_think_chat_template", "Qwen3VLProcessor", _QWEN3_VIDEO,
            "Qwen3_5ForConditionalGeneration", _qwen3_5_config,
        ),
        Family(
            "qwen3.5-moe", 16, _HALF, _HALF, "qwen3_5_think_chat_template", "Qwen3VLProcessor", _QWEN3_VIDEO,
            "Qwen3_5MoeForConditionalGeneration", _qwen3_5_moe_config,
        ),
    )
}
DEFAULT_FAMILY = "qwen2.5-vl"


def get_family(family: str) -> Family:
    """The family of a `--family` name; ValueError naming the known ones."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}") from None


def _chat_template(family: Family) -> str:
    import trl.chat_template_utils

    return getattr(trl.chat_template_utils, family.chat_template)


def build_processor(spec: TinySpec = TinySpec(), family: str = DEFAULT_FAMILY):
    """The family's stock processor around the tiny tokenizer, with small image sizes and TRL's chat template."""
    import importlib

    import transformers
    from transformers import Qwen2VLImageProcessor

    fam = get_family(family)
    template = _chat_template(fam)
    tokenizer = build_tokenizer(spec)
    tokenizer.chat_template = template
    # Same token counts per image in every family: the spec's bounds are in 28 px tokens.
    scale = (fam.token_side / _SPEC_TOKEN_SIDE) ** 2
    # An explicit `size` dict, not min_pixels/max_pixels: transformers 5.17 writes those two into the class-level
    # default `size`, which would shrink every Qwen2-VL processor created later in the same process.
    size = {"shortest_edge": round(spec.min_pixels * scale), "longest_edge": round(spec.max_pixels * scale)}
    vision = {
        "size": size,
        "patch_size": fam.patch_size,
        "merge_size": fam.merge_size,
        "temporal_patch_size": 2,
        "image_mean": list(fam.image_mean),
        "image_std": list(fam.image_std),
    }
    module, cls = fam.video_processor.split(":")
    video_class = getattr(importlib.import_module(f"transformers.models.{module}"), cls)
    processor_class = getattr(transformers, fam.processor_class)
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**vision),
        tokenizer=tokenizer,
        video_processor=video_class(**vision),
        chat_template=template,
    )


def build_config(tokenizer, spec: TinySpec = TinySpec(), family: str = DEFAULT_FAMILY):
    """The family's config at toy size whose special-token ids point into the tiny tokenizer.

    The special-token ids are set on the top-level config too, where `Trainer` reads them (`special_token_ids`).
    Set after construction: Qwen2_5_VLConfig's constructor takes them as flat text-config keys and, given a text
    config, drops them. (Loading drops them the same way, so a reloaded Qwen2.5-VL still has none there.)"""
    config = get_family(family).config_builder(tokenizer, spec)
    for name, value in special_token_ids(tokenizer).items():
        setattr(config, name, value)
    return config


def build_tiny_model(out_dir: str | Path, spec: TinySpec = TinySpec(), family: str = DEFAULT_FAMILY) -> Path:
    """Build, save and return the directory of a tiny random-init model of `family` with its processor."""
    import torch
    import transformers
    from transformers import GenerationConfig

    fam = get_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(spec, family)
    config = build_config(processor.tokenizer, spec, family)
    torch.manual_seed(spec.seed)
    model = getattr(transformers, fam.model_class)(config)
    model.generation_config = GenerationConfig(
        **_generation_ids(processor.tokenizer),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    model.save_pretrained(out)
    # Qwen3-VL-MoE's fused experts in the released layout, which vLLM and ZeRO-3 loading read (expert_layout)
    from .expert_layout import write_released_layout

    write_released_layout(out)
    processor.save_pretrained(out)
    return out


def is_tiny_model_dir(path: str | Path) -> bool:
    """True when `path` already holds a saved model and processor (so `make demo` can skip rebuilding)."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / "tokenizer.json").is_file() and any(p.glob("*.safetensors"))
