"""The tiny offline Qwen2.5-VL is a real, reloadable Qwen2.5-VL with the stock processor."""

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from triune_trl.models.tiny import QWEN_SPECIAL_TOKENS, TASK_TAGS, is_tiny_model_dir


def test_reloads_with_auto_classes_and_generates_from_an_image(tiny_model_dir):
    assert is_tiny_model_dir(tiny_model_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape is this?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    inputs = processor(images=[Image.new("RGB", (200, 150), "red")], text=[text], return_tensors="pt")
    t, h, w = inputs["image_grid_thw"][0].tolist()
    # One <|image_pad|> per merged 2x2 patch group: the processor expanded the placeholder to match the grid.
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == t * h * w // 4
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_processor_keeps_images_small(tiny_model_dir):
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    inputs = processor.image_processor(images=[Image.new("RGB", (2048, 1024), "blue")], return_tensors="pt")
    _, h, w = inputs["image_grid_thw"][0].tolist()
    assert (h * 14) * (w * 14) <= 28 * 28 * 16


def test_special_tokens_and_task_tags(tiny_model_dir):
    tokenizer = AutoProcessor.from_pretrained(tiny_model_dir).tokenizer
    for token in QWEN_SPECIAL_TOKENS + TASK_TAGS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # Task tags must survive TRL's decoding (skip_special_tokens=True); Qwen's control tokens must not.
    ids = tokenizer.encode("<ok> <answer>\n1\n</answer><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<ok> <answer>\n1\n</answer>"


def test_building_the_tiny_processor_leaves_stock_defaults_alone():
    from transformers import Qwen2VLImageProcessor

    from triune_trl.models.tiny import build_processor

    build_processor()
    assert Qwen2VLImageProcessor().size["longest_edge"] == 28 * 28 * 1280


# --- every family ([qwen3]) ---------------------------------------------------------------------------------------

import pytest  # noqa: E402

from triune_trl.models.tiny import FAMILIES  # noqa: E402

QWEN3_FAMILIES = [f for f in FAMILIES if f != "qwen2.5-vl"]
MODEL_CLASS = {
    "qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3-vl": "Qwen3VLForConditionalGeneration",
    "qwen3-vl-moe": "Qwen3VLMoeForConditionalGeneration",
    "qwen3.5": "Qwen3_5ForConditionalGeneration",
    "qwen3.5-moe": "Qwen3_5MoeForConditionalGeneration",
}


@pytest.mark.parametrize("family", QWEN3_FAMILIES)
def test_every_family_reloads_with_auto_classes_and_generates_from_images(tiny_family_model, family):
    path = tiny_family_model(family)
    assert is_tiny_model_dir(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == MODEL_CLASS[family]
    assert type(processor).__name__ == "Qwen3VLProcessor"
    # What the released Qwen3-VL / Qwen3.5 processors do: 16 px patches merged 2 x 2, mean/std 0.5.
    image_processor = processor.image_processor
    assert (image_processor.patch_size, image_processor.merge_size) == (16, 2)
    assert list(image_processor.image_mean) == [0.5] * 3 and list(image_processor.image_std) == [0.5] * 3
    assert model.config.text_config.head_dim == 32 and model.config.vision_config.hidden_size // 2 == 32

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which is red?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    # TRL's Qwen3.5 (4B and larger) template pre-fills the opening think tag; Qwen3-VL's does not.
    assert text.endswith("<|im_start|>assistant\n<think>\n" if family.startswith("qwen3.5") else "assistant\n")
    images = [Image.new("RGB", (200, 150), "red"), Image.new("RGB", (64, 64), "blue")]
    inputs = processor(images=images, text=[text], return_tensors="pt")
    grids = inputs["image_grid_thw"].tolist()
    # 32 px per token within 4-16 tokens: 200 x 150 (29 tokens) shrinks to 128 x 96 = 4 x 3 tokens, 64 x 64 is 2 x 2.
    assert [h * w // 4 for _, h, w in grids] == [12, 4]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == sum(t * h * w // 4 for t, h, w in grids)
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_family_specific_config(tiny_family_model):
    import json

    def text_config(family):
        return json.loads((tiny_family_model(family) / "config.json").read_text())["text_config"]

    # vLLM's Qwen3-VL-MoE reads norm_topk_prob (transformers' router renormalises without it).
    assert text_config("qwen3-vl-moe")["norm_topk_prob"] is True
    for family in ("qwen3.5", "qwen3.5-moe"):
        config = text_config(family)
        # vLLM-CPU's gated-delta-net kernel takes linear heads 64 or 128 wide; one layer of each attention kind.
        assert config["linear_key_head_dim"] == config["linear_value_head_dim"] == 64
        assert config["layer_types"] == ["linear_attention", "full_attention"]
    assert text_config("qwen3.5-moe")["num_experts"] == 4


def test_unknown_family_is_one_line():
    from triune_trl.models.tiny import build_processor

    with pytest.raises(ValueError, match="unknown model family 'qwen4'; choose one of qwen2.5-vl, qwen3-vl"):
        build_processor(family="qwen4")


def test_cli_builds_the_named_family(tmp_path, capsys):
    import json

    from triune_trl.cli import main

    assert main(["tiny-model", str(tmp_path / "m"), "--family", "qwen3.5-moe"]) == 0
    assert "tiny qwen3.5-moe (model + processor) written to" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "qwen3_5_moe"
    with pytest.raises(SystemExit):
        main(["tiny-model", str(tmp_path / "n"), "--family", "qwen4"])
    assert "qwen3-vl-moe" in capsys.readouterr().err


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_generation_config_and_tokenizer_agree_on_special_tokens(tiny_family_model, family):
    import json

    from transformers import trainer_utils
    from transformers.testing_utils import CaptureLogger

    path = tiny_family_model(family)
    processor = AutoProcessor.from_pretrained(path)
    tokenizer = processor.tokenizer
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    assert ids == {"bos_token_id": None, "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
                   "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    config = json.loads((path / "config.json").read_text())
    for section in (config, config["text_config"]):
        assert {name: section.get(name) for name in ids} == ids
    generation = json.loads((path / "generation_config.json").read_text())
    assert generation.get("bos_token_id") is None and generation["pad_token_id"] == ids["pad_token_id"]
    assert generation["eos_token_id"] == [ids["eos_token_id"], ids["pad_token_id"]]  # end of turn, of document

    # What `Trainer` does with them at the start of every run: nothing to align, so no pad/eos warning.
    model = AutoModelForImageTextToText.from_pretrained(path)
    if family == "qwen2.5-vl" and getattr(model.config, "eos_token_id", None) is None:
        pytest.xfail("transformers' Qwen2_5_VLConfig drops the top-level ids config.json holds when it loads")
    before = (model.config.to_dict(), model.generation_config.to_dict())
    with CaptureLogger(trainer_utils.logger) as captured:
        trainer_utils.align_special_tokens(model, processor)
    assert (model.config.to_dict(), model.generation_config.to_dict()) == before
    assert "PAD/BOS/EOS" not in captured.out
