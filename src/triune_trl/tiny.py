"""A tiny, random-init Qwen2.5-VL built entirely offline.

Why: tests and the CPU demo need the *real* Qwen2.5-VL code paths (processor, chat template, mRoPE, vision tower,
TRL's VLM handling) without downloading anything from the Hub. Everything here is the stock transformers classes
at toy sizes: a byte-level BPE tokenizer trained on local text and wrapped as `Qwen2Tokenizer` with Qwen's special
tokens, the stock `Qwen2VLImageProcessor`/`Qwen2VLVideoProcessor`/`Qwen2_5_VLProcessor`, TRL's Qwen2.5-VL chat
template, and `Qwen2_5_VLForConditionalGeneration` from a small `Qwen2_5_VLConfig`.

The result reloads with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# Qwen2.5-VL's special tokens, in Qwen's order. `<|endoftext|>` doubles as pad token, `<|im_end|>` ends a turn.
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


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults give ~0.6M parameters: a GRPO step on CPU takes a fraction of a second.

    Attention heads are 32 wide (text and vision): vLLM's CPU attention supports head sizes 32, 64, 80, ... only,
    so a smaller head would keep the tiny model off the vLLM generation path that the tests run.
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
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 16
    seed: int = 0
    # Also train the BPE on the bundled sample set's prompts and answers and on the release's CoT instructions,
    # so that those prompts take a few dozen tokens instead of hundreds (sequence length is the cost on a CPU).
    prompt_corpus: bool = False


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
PRESETS: dict[str, TinySpec] = {"test": TinySpec(), "learn": LEARN_SPEC}


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
    from .data.cot_prompts import CLOSE_FORM_FIRST, CLOSE_FORM_SECOND, FREE_FORM_FIRST, FREE_FORM_SECOND
    from .data.make_sample import SAMPLE_SOURCES

    rng = random.Random(seed)
    lines = [*CLOSE_FORM_FIRST, *CLOSE_FORM_SECOND, *FREE_FORM_FIRST, *FREE_FORM_SECOND]
    for source in SAMPLE_SOURCES:
        for _ in range(per_source):
            example = source.build(rng)
            lines += [example.question, example.ground_truth, example.answer]
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


def build_processor(spec: TinySpec = TinySpec()):
    """The stock `Qwen2_5_VLProcessor` around the tiny tokenizer, with small image sizes and TRL's chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from trl.chat_template_utils import qwen2_5_vl_chat_template

    tokenizer = build_tokenizer(spec)
    tokenizer.chat_template = qwen2_5_vl_chat_template
    # An explicit `size` dict, not min_pixels/max_pixels: transformers 5.17 writes those two into the class-level
    # default `size`, which would shrink every Qwen2-VL processor created later in the same process.
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels})
    video_processor = Qwen2VLVideoProcessor(size={"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels})
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=qwen2_5_vl_chat_template,
    )


def build_config(tokenizer, spec: TinySpec = TinySpec()):
    """A `Qwen2_5_VLConfig` at toy size whose special-token ids point into the tiny tokenizer."""
    from transformers import Qwen2_5_VLConfig

    head_dim = spec.hidden_size // spec.num_heads
    # mRoPE splits each head's rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope_section = [half - 2 * (half // 3), half // 3, half // 3]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": 4096,
        "max_window_layers": spec.num_layers,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
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
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_tiny_model(out_dir: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Build, save and return the directory of a tiny random-init Qwen2.5-VL with its processor."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(spec)
    config = build_config(processor.tokenizer, spec)
    torch.manual_seed(spec.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def is_tiny_model_dir(path: str | Path) -> bool:
    """True when `path` already holds a saved model and processor (so `make demo` can skip rebuilding)."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / "tokenizer.json").is_file() and any(p.glob("*.safetensors"))
