"""`triune_trl.models.expert_layout` on the tiny family models: which families transformers keeps in another layout than
their released checkpoints, what the sync sends vLLM instead, and the saved folder's layout (no vLLM needed)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from triune_trl.models.expert_layout import released_layout, released_layout_iterator, write_released_layout
from triune_trl.models.tiny import FAMILIES


def assert_saved_experts_in_released_layout(folder, text_config) -> None:
    """A saved Qwen3-VL-MoE folder holds `experts.gate_up_proj` as released checkpoints do: (E, hidden, 2 x I)."""
    with safe_open(folder / "model.safetensors", "pt") as saved:
        name = next(key for key in saved.keys() if key.endswith("experts.gate_up_proj"))
        assert tuple(saved.get_slice(name).get_shape()) == (
            text_config.num_experts, text_config.hidden_size, 2 * text_config.moe_intermediate_size)


@pytest.mark.parametrize("family", [family for family in FAMILIES if family != "qwen3-vl-moe"])
def test_families_transformers_keeps_in_the_released_layout_pass_through(family, tiny_family_model):
    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model(family))
    assert released_layout(model) is None
    assert write_released_layout(tiny_family_model(family)) == []


def test_qwen3_vl_moe_experts_reach_vllm_as_the_released_checkpoint_holds_them(tiny_family_model):
    folder = tiny_family_model("qwen3-vl-moe")
    saved = {name: tensor for path in folder.glob("*.safetensors") for name, tensor in load_file(path).items()}
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    rule = released_layout(model)
    assert rule is not None
    in_memory = dict(model.named_parameters())
    sent = dict(released_layout_iterator(((name, p.detach()) for name, p in in_memory.items()), rule))
    experts = sorted(name for name in in_memory if ".mlp.experts." in name)
    assert len(experts) == 4  # gate_up_proj and down_proj of 2 layers
    for name in experts:
        text = model.config.text_config
        hidden, intermediate = text.hidden_size, text.moe_intermediate_size
        released_shape = (4, hidden, 2 * intermediate) if "gate_up" in name else (4, intermediate, hidden)
        assert tuple(in_memory[name].shape) == (released_shape[0], released_shape[2], released_shape[1])
        assert tuple(sent[name].shape) == released_shape
        assert torch.equal(sent[name], saved[name])  # the tiny folder holds the released layout
        assert torch.equal(sent[name].transpose(1, 2), in_memory[name])
    assert all(sent[name] is in_memory[name].detach() or torch.equal(sent[name], in_memory[name])
               for name in in_memory if name not in experts)
    assert write_released_layout(folder) == []  # already released: nothing to rewrite


def test_a_qwen3_vl_moe_folder_saved_by_transformers_is_rewritten_in_the_released_layout(tiny_family_model, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(tiny_family_model("qwen3-vl-moe"), dtype=torch.float32)
    model.save_pretrained(tmp_path)  # transformers 5.17 writes its in-memory (transposed) layout
    rewritten = write_released_layout(tmp_path)
    assert len(rewritten) == 4 and all(".mlp.experts." in name for name in rewritten)
    assert_saved_experts_in_released_layout(tmp_path, model.config.text_config)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.float32)
    assert all(torch.equal(parameter, model.get_parameter(name)) for name, parameter in reloaded.named_parameters())
    assert write_released_layout(tmp_path) == []


@pytest.fixture
def vllm_registered_configs():
    """vLLM's config parser as a colocate engine start runs it: it registers vLLM's own `Qwen3_5Config` /
    `Qwen3_5MoeConfig` with transformers' AutoConfig for the rest of the process (restored after the test)."""
    pytest.importorskip("vllm", reason="vllm is not installed")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from vllm.transformers_utils.config import HFConfigParser

    saved = dict(CONFIG_MAPPING._extra_content)
    try:
        yield lambda folder: HFConfigParser().parse(folder, trust_remote_code=False)
    finally:
        CONFIG_MAPPING._extra_content.clear()
        CONFIG_MAPPING._extra_content.update(saved)


@pytest.mark.parametrize("family", ["qwen3.5", "qwen3.5-moe"])
def test_the_saved_folder_is_read_with_transformers_classes_after_vllm_registered_its_own(
    family, tiny_family_model, vllm_registered_configs
):
    from transformers import AutoConfig

    folder = tiny_family_model(family)
    vllm_registered_configs(folder)
    # the cause of the crash at the end of a colocate run: AutoConfig now gives vLLM's class, whose vision config
    # lacks transformers' num_attention_heads alias that transformers' vision tower reads
    assert type(AutoConfig.from_pretrained(folder)).__module__.startswith("vllm.")
    assert write_released_layout(folder) == []
