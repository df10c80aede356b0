"""Shipping a checkpoint: a real tiny run with `push_to_hub`, the Hub call replaced only at the network boundary
(`LocalFolderUploader` writes the commit's files to a folder), then the pushed folder loaded back with
`from_pretrained`; the card re-rendered with a per-source eval table; LoRA runs that adapt the language model only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import ModelConfig

from triune_trl.models.lora import LANGUAGE_MODEL_LORA_TARGETS, apply_lora_defaults
from triune_trl.runs import hub
from triune_trl.runs.hub import HubPushError, LocalFolderUploader
from triune_trl.runs.train import make_parser, run

from .conftest import REPO_ROOT, write_data_config

TINY_RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu.yaml"
EVAL_TABLE = """| data source | accuracy | format | n |
|---|---:|---:|---:|
| mm_math | 0.125 | 0.500 | 8 |
| v3det_train | 0.031 | 0.250 | 8 |"""


def _train(tmp_path: Path, tiny_model_dir: Path, sample_data_dir: Path, *extra: str):
    data_config = write_data_config(
        tmp_path / "data.yaml", sample_data_dir,
        ["train/train_math_mmmath_*.parquet", "train/train_format_tagformat_*.parquet"],
    )
    argv = [
        "--config", str(TINY_RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(data_config),
        "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--max_completion_length", "16", "--logging_steps", "1",
        "--save_strategy", "steps", "--save_steps", "1", "--disable_tqdm", "true", *extra,
    ]
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    return run(script_args, training_args, model_args, uploader=LocalFolderUploader(tmp_path / "hub"))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_model_dir, sample_data_dir):
    tmp_path = tmp_path_factory.mktemp("push")
    output_dir = _train(tmp_path, tiny_model_dir, sample_data_dir, "--push_to_hub", "true",
                        "--hub_model_id", "me/Orsta-tiny", "--hub_token", "hf_secret_never_written")
    return output_dir, tmp_path / "hub" / "me" / "Orsta-tiny"


@pytest.mark.slow
def test_the_pushed_folder_reloads_with_processor_and_weights(pushed):
    output_dir, repo = pushed
    names = {path.name for path in repo.iterdir()}
    assert {"model.safetensors", "config.json", "processor_config.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md", "triune_recipe.yaml", "triune_run.json"} <= names
    assert not {"training_args.bin", "checkpoint-1", "checkpoint-2"} & names, "checkpoints or pickled args pushed"
    assert (output_dir / "checkpoint-2").is_dir()  # they exist locally, they are just not shipped
    model = AutoModelForImageTextToText.from_pretrained(repo)
    trained = AutoModelForImageTextToText.from_pretrained(output_dir).state_dict()
    assert all(torch.equal(tensor, trained[name]) for name, tensor in model.state_dict().items())
    processor = AutoProcessor.from_pretrained(repo)
    assert processor.tokenizer.padding_side == "left"
    assert not any("hf_secret_never_written" in path.read_text(errors="ignore") for path in repo.iterdir())


@pytest.mark.slow
def test_the_model_card_names_base_model_data_recipe_and_how_to_reproduce(pushed, tiny_model_dir):
    _, repo = pushed
    card = (repo / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-text-to-text" in card
    assert f"`{tiny_model_dir}` (a local model)" in card
    assert "data.yaml" in card and "| mm_math | 8 |" in card and "| tag_format | 8 |" in card
    assert "| `loss_type` | `dapo` |" in card and "| `epsilon_high` | `0.28` |" in card
    assert "Trained for 2 optimizer steps on 1 process." in card
    assert "hf download me/Orsta-tiny triune_recipe.yaml" in card
    assert "python recipes/grpo_triune.py --config triune_recipe.yaml" in card
    assert "No evaluation table was attached" in card


@pytest.mark.slow
def test_the_pushed_recipe_reproduces_the_run_options(pushed, tmp_path):
    output_dir, repo = pushed
    recipe = yaml.safe_load((repo / "triune_recipe.yaml").read_text())
    assert "push_to_hub" not in recipe and "hub_token" not in recipe and "generation_batch_size" not in recipe
    assert (recipe["max_steps"], recipe["learning_rate"], recipe["hub_model_id"]) == (2, 0.003, "me/Orsta-tiny")
    script_args, args, model_args = make_parser().parse_args_and_config(["--config", str(repo / "triune_recipe.yaml")])
    assert (args.max_steps, args.per_device_train_batch_size, args.num_generations) == (2, 4, 4)
    assert (args.max_completion_length, args.steps_per_generation, args.use_cpu, args.bf16) == (16, 1, True, False)
    assert model_args.model_name_or_path == json.loads((repo / "triune_run.json").read_text())["base_model"]
    assert script_args.data_config.endswith("data.yaml")


@pytest.mark.slow
def test_the_card_is_re_rendered_with_the_eval_table_and_pushed_again(pushed, tmp_path):
    output_dir, _ = pushed
    table_file = tmp_path / "eval.md"
    table_file.write_text(EVAL_TABLE + "\n")
    assert hub.main([str(output_dir), "--repo-id", "me/Orsta-tiny", "--eval-table", str(table_file),
                     "--to-folder", str(tmp_path / "hub2")]) == 0
    card = (tmp_path / "hub2" / "me" / "Orsta-tiny" / "README.md").read_text()
    assert "## Evaluation\n\n" + EVAL_TABLE in card
    assert hub.read_eval_table(EVAL_TABLE) == EVAL_TABLE  # the table text itself works too


def test_push_refuses_a_folder_without_the_processor(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "README.md").write_text("card")
    with pytest.raises(HubPushError, match=r"missing the processor .*tokenizer"):
        hub.push_checkpoint(tmp_path, "me/x", LocalFolderUploader(tmp_path / "hub"))
    assert not (tmp_path / "hub").exists()


def test_a_bad_eval_table_argument_names_what_was_expected(tmp_path):
    with pytest.raises(HubPushError, match="no such file"):
        hub.read_eval_table(str(tmp_path / "missing.md"))
    (tmp_path / "notes.md").write_text("accuracy went up")
    with pytest.raises(HubPushError, match="expected a markdown table"):
        hub.read_eval_table(str(tmp_path / "notes.md"))


def test_lora_defaults_target_the_language_model_only_and_keep_explicit_targets():
    model_args = ModelConfig(use_peft=True)
    apply_lora_defaults(model_args)
    assert model_args.lora_target_modules == LANGUAGE_MODEL_LORA_TARGETS
    explicit = ModelConfig(use_peft=True, lora_target_modules=["q_proj", "v_proj"])
    apply_lora_defaults(explicit)
    assert explicit.lora_target_modules == ["q_proj", "v_proj"]
    off = ModelConfig(use_peft=False)
    apply_lora_defaults(off)
    assert off.lora_target_modules is None


@pytest.mark.slow
def test_one_lora_step_adapts_no_visual_parameter_and_pushes_an_adapter(tmp_path, tiny_model_dir, sample_data_dir):
    output_dir = _train(tmp_path, tiny_model_dir, sample_data_dir, "--use_peft", "true", "--lora_r", "4",
                        "--max_steps", "1", "--push_to_hub", "true", "--hub_model_id", "me/Orsta-tiny-lora")
    repo = tmp_path / "hub" / "me" / "Orsta-tiny-lora"
    with safe_open(repo / "adapter_model.safetensors", "pt") as adapter:
        keys = list(adapter.keys())
    assert keys and not [key for key in keys if "visual" in key or "lm_head" in key or "embed" in key]
    assert all(".language_model.layers." in key and ".lora_" in key for key in keys)
    layers = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).config.text_config.num_hidden_layers
    assert len(keys) == layers * 7 * 2, "q, k, v, o, gate, up, down projections, lora_A and lora_B each"
    card = (repo / "README.md").read_text()
    assert "library_name: peft" in card and "A LoRA adapter for" in card
    model = AutoModelForImageTextToText.from_pretrained(repo)  # transformers' PEFT integration loads the adapter
    assert model.peft_config
    assert not [name for name, _ in model.named_parameters() if "visual" in name and "lora" in name]
    assert (output_dir / "adapter_config.json").is_file()


@pytest.mark.slow
def test_the_end_of_a_run_decodes_no_image(tmp_path, tiny_model_dir, sample_data_dir, monkeypatch):
    """The model card counts rows per source from the `data_source` column alone: at Orsta scale, decoding and
    rescaling every training image again after training took 30% of a short run's wall time."""
    from triune_trl.data import loader
    from triune_trl.runs import train

    state = {"trained": False, "decoded_after": 0}
    decode, facts = loader.load_image, train.run_facts

    def counting_decode(*args, **kwargs):
        state["decoded_after"] += state["trained"]
        return decode(*args, **kwargs)

    def facts_after_training(*args, **kwargs):
        state["trained"] = True  # run() calls it once training has ended, to write the model card
        return facts(*args, **kwargs)

    monkeypatch.setattr(loader, "load_image", counting_decode)
    monkeypatch.setattr(train, "run_facts", facts_after_training)
    output_dir = _train(tmp_path, tiny_model_dir, sample_data_dir, "--save_strategy", "no")
    assert state["trained"]
    assert state["decoded_after"] == 0, f"{state['decoded_after']} images decoded after training"
    card_facts = json.loads((output_dir / hub.FACTS_FILE).read_text())
    assert sum(card_facts["train_rows_per_source"].values()) > 0
