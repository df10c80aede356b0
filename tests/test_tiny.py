"""The tiny offline Qwen2.5-VL is a real, reloadable Qwen2.5-VL with the stock processor."""

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2_5_VLForConditionalGeneration

from triune_trl.tiny import QWEN_SPECIAL_TOKENS, TASK_TAGS, is_tiny_model_dir


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

    from triune_trl.tiny import build_processor

    build_processor()
    assert Qwen2VLImageProcessor().size["longest_edge"] == 28 * 28 * 1280
