"""Every model family ([qwen3]: Qwen2.5-VL, Qwen3-VL dense/MoE, Qwen3.5 dense/MoE) through the data path: image
sizes and prompt token counts come from the family's processor (28 or 32 px per token, never an assumed 28),
`triune data --family` sizes images as that family's processor would."""

from __future__ import annotations

import json
import re

import PIL.Image
import pytest
import torch
from transformers import AutoProcessor
from trl.data_utils import apply_chat_template

from triune_trl.data import FileSpec, ImageSizing, QwenVLResize, load_files, make_image_resize
from triune_trl.data.loader import prompt_tokens, scan_files
from triune_trl.data.prompt_length import PromptTokenCounter
from triune_trl.models.tiny import FAMILIES, get_family

from .conftest import REPO_ROOT, write_data_config
from .test_data_orsta import image_bytes, orsta_row, write_orsta
from .test_preflight import orsta_root  # noqa: F401 - the Orsta-shaped data root of the preflight tests

QWEN3_FAMILIES = [f for f in FAMILIES if f != "qwen2.5-vl"]
LARGE_IMAGES = {"shortest_edge": 64 * 64, "longest_edge": 1024 * 1024}


def _mixed_file(tmp_path):
    rows = [
        orsta_row("What is 2 + 2?", []),
        orsta_row("<image>How many sides?", [image_bytes(640, 480)]),
        orsta_row("Compare <image> and <image>: which is larger?", [image_bytes(300, 900), image_bytes(1500, 1000)]),
    ]
    return write_orsta(tmp_path / "train" / "mixed.parquet", rows)


# The four Qwen3 families share one processor class and image processor; they differ in the chat template only
# (Qwen3-VL's, Qwen3.5's with its pre-filled think tag), so one of each covers them.
@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3.5"])
def test_sizes_and_prompt_tokens_follow_the_family_processor(tmp_path, tiny_family_model, family):
    processor = AutoProcessor.from_pretrained(tiny_family_model(family), size=LARGE_IMAGES)
    sizing = ImageSizing.from_processor(processor)
    assert sizing == ImageSizing(factor=32, min_pixels=64 * 64, max_pixels=1024 * 1024)
    path = _mixed_file(tmp_path)
    counts = prompt_tokens(scan_files([FileSpec(path)], sizing=sizing, rescale=None), PromptTokenCounter(processor))[0]
    dataset = load_files([FileSpec(path)], sizing=sizing, rescale=None, cache_dir=tmp_path / "cache")
    pad = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    for row, tokens in zip(dataset, counts, strict=True):
        # the model-side size the detection verifier uses is what the processor makes of the image: 32 px tokens
        for image, (width, height) in zip(row["images"], row["image_sizes"], strict=True):
            grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
            assert (width, height) == (grid[2] * 16, grid[1] * 16)
            assert width % 32 == 0 and height % 32 == 0
        # the prompt budget counts what the processor produces, Qwen3.5's pre-filled `<think>\n` included
        text = apply_chat_template({"prompt": row["prompt"]}, processor)["prompt"]
        inputs = processor(images=[row["images"]] if row["images"] else None, text=[text], return_tensors="pt")
        assert inputs["input_ids"].shape[1] == tokens.total
        assert int((inputs["input_ids"] == pad).sum()) == tokens.image
    # 640 x 480 is 20 x 15 = 300 tokens of 32 px (Qwen2.5-VL's 28 px would make it 23 x 17 = 391)
    assert counts[1].image == 300


def test_for_family_gives_the_family_patching_with_the_default_token_bounds():
    assert get_family("qwen2.5-vl").image_sizing() == ImageSizing()
    for family in QWEN3_FAMILIES:
        assert get_family(family).image_sizing() == ImageSizing(32, 4 * 32 * 32, 1280 * 32 * 32)
    assert get_family("qwen3-vl").image_sizing().model_size(640, 480) == (640, 480)
    with pytest.raises(ValueError, match="unknown model family 'qwen4'"):
        get_family("qwen4").image_sizing()


def test_qwen_vl_resize_follows_the_family_factor_as_qwen_vl_utils_does():
    from qwen_vl_utils.vision_process import fetch_image

    rule = make_image_resize("qwen-vl", factor=32)
    assert rule == QwenVLResize(factor=32) == QwenVLResize(4 * 32 * 32, 16384 * 32 * 32, 32)
    assert QwenVLResize() == QwenVLResize(4 * 28 * 28, 16384 * 28 * 28, 28)  # Qwen2.5-VL, unchanged
    for size in ((1000, 333), (60, 50), (4000, 3000)):
        reference = fetch_image({"image": PIL.Image.new("RGB", size)}, image_patch_size=16)
        assert rule.apply(PIL.Image.new("RGB", size)).size == reference.size


def test_data_stats_sizes_images_for_the_named_family(tmp_path, capsys):
    from triune_trl.cli import main

    path = write_orsta(tmp_path / "train" / "a.parquet", [orsta_row("<image>x", [image_bytes(640, 480)])])
    config = write_data_config(tmp_path / "data.yaml", tmp_path, [str(path.relative_to(tmp_path))])
    tokens = {}
    for family in ("qwen2.5-vl", "qwen3-vl"):
        args = ["data", "stats", "--data-config", str(config), "--json", "--resize", "none", "--family", family]
        assert main(args) == 0
        stats = json.loads(capsys.readouterr().out)
        tokens[family] = (stats["image_width"]["max"], stats["image_tokens"]["max"])
    assert tokens == {"qwen2.5-vl": (644.0, 23 * 17), "qwen3-vl": (640.0, 20 * 15)}
    assert main(["data", "stats", "--data-config", str(config)]) == 0  # default: Qwen2.5-VL, as before
    capsys.readouterr()


# --- LoRA targets per family ---------------------------------------------------------------------------------------

OLD_QWEN2_5_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def _matched(model_dir, pattern):
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    return {name for name, _ in model.named_modules() if re.fullmatch(pattern, name)}


def test_lora_targets_keep_qwen2_5_vl_and_reach_qwen3_5_linear_attention_and_shared_experts(tiny_family_model):
    from triune_trl.models.lora import LANGUAGE_MODEL_LORA_TARGETS

    qwen2_5 = _matched(tiny_family_model("qwen2.5-vl"), LANGUAGE_MODEL_LORA_TARGETS)
    assert qwen2_5 == _matched(tiny_family_model("qwen2.5-vl"), OLD_QWEN2_5_TARGETS) and len(qwen2_5) == 14
    matched = _matched(tiny_family_model("qwen3.5-moe"), LANGUAGE_MODEL_LORA_TARGETS)
    moe = {name.split(".layers.")[1] for name in matched}
    assert {"0.linear_attn.in_proj_qkv", "0.linear_attn.out_proj", "0.mlp.shared_expert.down_proj",
            "1.self_attn.q_proj"} <= moe
    assert not {name for name in moe if name.endswith(("mlp.gate", "shared_expert_gate", "conv1d"))}


def test_lora_defaults_add_fused_experts_only_without_dropout(tiny_family_model, caplog):
    from trl import ModelConfig

    from triune_trl.errors import UsageError
    from triune_trl.models.lora import FUSED_EXPERT_LORA_PARAMETERS, apply_lora_defaults

    for family in ("qwen3-vl-moe", "qwen3.5-moe"):
        no_dropout = ModelConfig(model_name_or_path=str(tiny_family_model(family)), use_peft=True, lora_dropout=0.0)
        apply_lora_defaults(no_dropout)
        assert no_dropout.lora_target_parameters == FUSED_EXPERT_LORA_PARAMETERS
        with caplog.at_level("WARNING", logger="triune_trl.models.lora"):
            trl_default = ModelConfig(model_name_or_path=str(tiny_family_model(family)), use_peft=True)
            apply_lora_defaults(trl_default)
        assert trl_default.lora_target_parameters is None and trl_default.lora_target_modules
        assert "pass --lora_dropout 0 to adapt them too (got 0.05)" in caplog.text
    dense = ModelConfig(model_name_or_path=str(tiny_family_model("qwen3.5")), use_peft=True, lora_dropout=0.0)
    apply_lora_defaults(dense)
    assert dense.lora_target_parameters is None
    explicit = ModelConfig(use_peft=True, lora_target_parameters=["mlp.experts.down_proj"])
    with pytest.raises(UsageError, match=r"--lora_target_parameters mlp.experts.down_proj needs --lora_dropout 0"):
        apply_lora_defaults(explicit)


# --- think pre-fill --------------------------------------------------------------------------------------------------


def test_completion_prefill_is_the_unclosed_think_tag_of_qwen3_5_only(tiny_family_model):
    from trl.chat_template_utils import qwen3_5_nothink_chat_template

    from triune_trl.models.prefill import completion_prefill, prefill_of

    think = "<think>\n"
    expected = {"qwen2.5-vl": "", "qwen3-vl": "", "qwen3-vl-moe": "", "qwen3.5": think, "qwen3.5-moe": think}
    for family, prefill in expected.items():
        processor = AutoProcessor.from_pretrained(tiny_family_model(family))
        assert completion_prefill(processor) == prefill, family
        assert completion_prefill(processor.tokenizer) == prefill, family
    qwen3_5 = AutoProcessor.from_pretrained(tiny_family_model("qwen3.5"))
    # thinking turned off: the template pre-fills a closed, empty block; nothing is prepended
    assert completion_prefill(qwen3_5, {"enable_thinking": False}) == ""
    qwen3_5.chat_template = qwen3_5_nothink_chat_template  # Qwen3.5-2B and smaller
    assert completion_prefill(qwen3_5) == ""
    assert completion_prefill(qwen3_5, {"enable_thinking": True}) == "<think>\n"
    assert prefill_of("<|im_start|>assistant\n") == "" and prefill_of("assistant\n<think>\n\n</think>\n\n") == ""


def test_the_router_scores_prefill_plus_completion():
    from triune_trl.rewards import RewardRouter

    spec = {"ground_truth": "\\boxed{4}", "verifier": "mathverify", "accuracy_ratio": 1.0, "format_ratio": 1.0}
    continued = "2 + 2\n</think>\n<answer>\n\\boxed{4}\n</answer>"  # what a model writes after a pre-filled <think>
    reopened = "<think>\n" + continued
    router = RewardRouter(workers=0)
    assert router(completions=[continued, reopened], reward_model=[spec, spec]) == [0.875, 1.0]  # release scoring
    router.completion_prefix = "<think>\n"
    assert router(completions=[continued, reopened], reward_model=[spec, spec]) == [1.0, 0.875]
    assert [s["format_reward"] for s in router.last_scores] == [1.0, 0.75]


# --- recipes -------------------------------------------------------------------------------------------------------

FAMILY_RECIPES = {
    "orsta_qwen3vl_8b.yaml": ("qwen3-vl", "8192 = 8 per device x 128 accumulation x 8"),
    "orsta_qwen3.5_9b.yaml": ("qwen3.5", "8192 = 8 per device x 128 accumulation x 8"),
    "orsta_qwen3.5_35b_a3b.yaml": ("qwen3.5-moe", "8192 = 4 per device x 256 accumulation x 8"),
    "orsta_qwen3vl_30b_a3b.yaml": ("qwen3-vl-moe", "8192 = 4 per device x 256 accumulation x 8"),
}


@pytest.mark.parametrize("recipe", sorted(FAMILY_RECIPES))
def test_family_recipes_pass_preflight(capsys, tiny_family_model, orsta_root, recipe):  # noqa: F811
    from triune_trl.cli import main

    family, batch = FAMILY_RECIPES[recipe]
    code = main(["preflight", "--config", str(REPO_ROOT / "recipes" / "configs" / recipe), "--model_name_or_path",
                 str(tiny_family_model(family)), "--data_root", str(orsta_root), "--use_vllm", "false"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "preflight: ok" in out and "loaded, no weights: Qwen3VLProcessor" in out
    assert batch in out and "8192 = 1024 prompts x 8 generations" in out
    assert "1 (1 rounds of 1024 prompts, 1040 rows kept)" in out and "mm_math" in out
