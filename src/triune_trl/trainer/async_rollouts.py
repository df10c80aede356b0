"""One-step off-policy rollouts in vLLM server mode (`async_rollouts: true`): the server generates batch k+1 while
the trainer takes its update on batch k.

A synchronous GRPO step is generate -> score -> log-probs -> update, one after the other, so in server mode the vLLM
GPUs idle while the trainers train and the other way round. Here, at the generation point of batch k, the trainer
(1) waits for batch k, which the server generated during the previous update with the weights before it,
(2) pushes its current weights (one step newer), (3) has the server start batch k+1 with them, in a thread of the
main process, and (4) scores batch k and trains on it while batch k+1 generates. Batch k+1 is therefore exactly one
optimizer step stale (`max_staleness: 1`); `max_staleness: 0` launches each batch at its own generation point and
waits for it, which is the synchronous run, bit for bit.

How it fits in TRL 1.16 without copying its scoring code: the batch a rollout is launched for is run through TRL's
own `_generate_and_score_completions` up to the generation call, where `generate()` below gathers the prompts (a
collective, on every rank, as TRL's server mode does), submits the HTTP requests to the rollout thread (main process
only) and stops the rest with `_Launched`; when the batch is trained, TRL's scoring runs on it again and `generate()`
returns the completions the thread got, broadcast to every rank as TRL does. The prompt ids of both passes must be
equal (checked). Which batch comes next is read one generation batch ahead of the Trainer's DataLoader
(`Lookahead`, installed in `get_batch_samples`), so the data order is the synchronous run's. Where nothing can be
read ahead (the first batch, the first batch of an epoch, the first batch after a resume: the in-flight batch of a
killed run was never trained and is regenerated) the batch is generated at its own generation point (staleness 0).

The off-policy gap is corrected as decoupled PPO does: vLLM's log-probs of the sampled tokens are the behaviour
policy; TRL computes `old_per_token_logps` with the current weights when it scores the batch, just before the update
on it: the proximal policy of the PPO ratio; and TRL's importance-sampling correction
(`vllm_importance_sampling_correction`, required here) weighs the loss by proximal / behaviour, truncated or masked
by `vllm_importance_sampling_mode`. Rewards, the dynamic IoU threshold included, are scored when the batch is
trained, at that step's threshold. Metrics per generation: `async/staleness`, `async/trainer_wait_s` (the trainer
waited for the server), `async/server_idle_s` (the server waited for the trainer: between the end of the previous
generation and this launch), `async/generation_s`, `async/update_s` (the trainer's time between generation points);
with `async_check_behaviour_logps`, the trainer's log-probs under the weights that generated the batch
(`async/behaviour_logp_gap/mean|max`, which stays ~0 when the weight sync is right) next to TRL's
`sampling/sampling_logp_difference/*` against the current weights (the one-step drift).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object

_REMEMBERED_POSITIONS = 4096  # yielded items whose position is kept: far more than one optimizer step's batches


class _Launched(Exception):  # noqa: N818 - not an error: the end of a launch pass through TRL's scoring
    """Raised by `AsyncRollouts.generate` once a launched batch's requests are on their way."""


class Lookahead:
    """An iterator over the Trainer's epoch iterator that can read ahead, and knows each item's position in it."""

    def __init__(self, source: Iterator):
        self.source = source
        self._ahead: deque = deque()
        self._taken = 0
        self._positions: OrderedDict[int, int] = OrderedDict()  # id(item) -> position
        self._exhausted = False

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self):
        item = self._ahead.popleft() if self._ahead else next(self.source)
        self._positions[id(item)] = self._taken
        if len(self._positions) > _REMEMBERED_POSITIONS:
            self._positions.popitem(last=False)
        self._taken += 1
        return item

    def position(self, item) -> int | None:
        """The position of an item this iterator yielded (None: not one of its recent items)."""
        return self._positions.get(id(item))

    def at(self, position: int):
        """The item at `position` if it is still ahead and the epoch has it, else None; reading ahead consumes
        nothing the Trainer will not get."""
        offset = position - self._taken
        if offset < 0:
            return None
        while len(self._ahead) <= offset and not self._exhausted:
            try:
                self._ahead.append(next(self.source))
            except StopIteration:
                self._exhausted = True
        return self._ahead[offset] if offset < len(self._ahead) else None


@dataclass
class Rollout:
    """One generation batch: launched with the weights of `weights_step`, trained at a later step."""

    position: int | None
    rows: list[dict]
    weights_step: int = -1
    prompt_ids: list[list[int]] | None = None
    future: Future | None = None  # main process: the server's payload
    launched_at: float = 0.0
    generation_s: float = 0.0
    finished_at: float = 0.0
    behaviour_weights: list | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def _generate_on_server(vllm_generation, prompt_ids, images, num_generations: int, sampling_params: dict, rollout):
    """The main process's part of TRL's server-mode `VLLMGeneration.generate`, run in the rollout thread: the image
    features, then one generation request per prompt (or one batch request for text-only prompts)."""
    start = time.perf_counter()
    client = vllm_generation.vllm_client
    unique_prompts = prompt_ids[::num_generations]
    features = None
    if images is not None:
        features = client.image_features(images[::num_generations])
        features = [
            vllm_generation._place_features(prompt_features, ids)
            for prompt_features, ids in zip(features, unique_prompts, strict=True)
        ]
    output = client.generate(prompts=unique_prompts, features=features, n=num_generations, **sampling_params)
    rollout.generation_s = time.perf_counter() - start
    rollout.finished_at = time.perf_counter()
    return output["prompt_ids"], output["completion_ids"], output["logprobs"]


def _sampling_params(vllm_generation) -> dict:
    """TRL's server-mode sampling parameters (`VLLMGeneration.generate`), read when a batch is launched."""
    return {
        "repetition_penalty": vllm_generation.repetition_penalty,
        "temperature": vllm_generation.temperature,
        "top_p": vllm_generation.top_p,
        "top_k": vllm_generation.top_k,
        "min_p": 0.0 if vllm_generation.min_p is None else vllm_generation.min_p,
        "max_tokens": vllm_generation.max_completion_length,
        "logprobs": vllm_generation.logprobs,
        "structured_outputs_regex": vllm_generation.structured_outputs_regex,
        "generation_kwargs": vllm_generation.generation_kwargs,
    }


def snapshot_weights(model: torch.nn.Module) -> list:
    """This process's copy of the weights as they are now: the full tensor where the process holds it, and under
    ZeRO-3 its partition (`ds_tensor`), which is what a later gather reads."""
    snapshot = []
    for parameter in model.parameters():
        partition = getattr(parameter, "ds_tensor", None)
        snapshot.append((
            parameter.data.detach().clone() if parameter.data.numel() else None,
            partition.detach().clone() if partition is not None else None,
        ))
    return snapshot


@contextmanager
def weights_swapped(model: torch.nn.Module, snapshot: list):
    """Run with the weights of `snapshot` (`snapshot_weights`), then put the current ones back."""
    parameters = list(model.parameters())

    def exchange(entries: list) -> list:
        previous = []
        for parameter, (data, partition) in zip(parameters, entries, strict=True):
            old_data = old_partition = None
            if data is not None and parameter.data.shape == data.shape:
                old_data, parameter.data = parameter.data, data
            if partition is not None:
                old_partition, parameter.ds_tensor.data = parameter.ds_tensor.data, partition
            previous.append((old_data, old_partition))
        return previous

    current = exchange(snapshot)
    try:
        yield
    finally:
        exchange(current)


class AsyncRollouts:
    """The trainer's side of one-step off-policy generation (see the module docstring)."""

    def __init__(self, trainer, max_staleness: int, check_behaviour_logps: bool):
        self.trainer = trainer
        self.max_staleness = max_staleness
        self.check_behaviour_logps = check_behaviour_logps
        self.lookahead: Lookahead | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triune-rollouts")
        self._pending: Rollout | None = None
        self._launching: Rollout | None = None
        self._replaying: Rollout | None = None
        self._last_finished: float | None = None
        self._last_ready: float | None = None

    # --- the Trainer's DataLoader, read one generation batch ahead ----------------------------------------------

    def batches(self, epoch_iterator: Iterator) -> Lookahead:
        """The iterator `get_batch_samples` reads from: the same items, readable ahead."""
        if self.lookahead is None or self.lookahead.source is not epoch_iterator:
            if self.lookahead is not None and self.lookahead.source is not epoch_iterator:
                self._drop_pending()  # a new epoch: a batch read ahead from the old one is not coming
            self.lookahead = Lookahead(epoch_iterator)
        return self.lookahead

    # --- a generation point of training --------------------------------------------------------------------------

    def rows_to_train(self, generation_batch: list[dict]) -> list[dict]:
        """At the generation point of `generation_batch`: its rollout done (generated now if it was not launched
        before), the next batch launched with the current weights; returns the rows TRL scores."""
        trainer = self.trainer
        arrived = time.perf_counter()
        position = self.lookahead.position(generation_batch) if self.lookahead is not None else None
        rollout = self._pending if self._pending is not None and self._pending.position == position else None
        if rollout is None:
            self._drop_pending()
            rollout = self._launch(trainer.generation_rows(generation_batch), position)
        self._pending = None
        self._wait(rollout)
        trainer_wait = time.perf_counter() - arrived
        following = self._following_batch(position)
        if following is not None:
            self._pending = self._launch(trainer.generation_rows(following), position + self._generate_every())
        rollout.metrics.update({
            "async/staleness": float(trainer.state.global_step - rollout.weights_step),
            "async/trainer_wait_s": trainer_wait,
            "async/generation_s": rollout.generation_s,
        })
        if self._last_ready is not None:
            rollout.metrics["async/update_s"] = arrived - self._last_ready
        self._replaying = rollout
        return rollout.rows

    def trained(self) -> None:
        """The rollout being trained was scored: log its metrics, remember when the trainer went back to training."""
        rollout, self._replaying = self._replaying, None
        if rollout is None:
            return
        metrics = self.trainer._metrics["train"]
        for key, value in rollout.metrics.items():
            metrics[key].append(value)
        self._last_ready = time.perf_counter()

    def _generate_every(self) -> int:
        return self.trainer.args.steps_per_generation * self.trainer.num_iterations

    def _following_batch(self, position: int | None):
        """The next generation batch, if it is read ahead (staleness 1), exists in this epoch and will be trained."""
        trainer = self.trainer
        if self.max_staleness < 1 or position is None or self.lookahead is None:
            return None
        accumulation = trainer.current_gradient_accumulation_steps
        micro_steps_left = (trainer.state.max_steps - trainer.state.global_step) * accumulation - (
            trainer._step % accumulation)
        if micro_steps_left <= self._generate_every():
            return None
        return self.lookahead.at(position + self._generate_every())

    # --- launching, waiting ----------------------------------------------------------------------------------------

    def _launch(self, rows: list[dict], position: int | None) -> Rollout:
        """Run TRL's scoring of `rows` up to its generation call, where `generate` sends the requests and stops it."""
        self._launching = Rollout(position=position, rows=rows)
        try:
            self.trainer._generate_and_score_completions(rows)
        except _Launched:
            pass
        else:
            raise RuntimeError("TRL's _generate_and_score_completions returned without generating: async rollouts "
                               "need trl 1.16.x")
        finally:
            rollout, self._launching = self._launching, None
        return rollout

    def _wait(self, rollout: Rollout) -> None:
        if rollout.future is not None:
            rollout.future.result()

    def _drop_pending(self) -> None:
        """Let the server finish the batch in flight (its weights must not change under it) and forget it."""
        if self._pending is not None:
            self._wait(self._pending)
            self._pending = None

    def settle(self) -> None:
        """Before any other use of the server (an evaluation's generation, a weight sync): the batch in flight ends
        first. Its completions are kept for its training step."""
        if self._pending is not None:
            self._wait(self._pending)

    def drain(self) -> None:
        """The end of `train()` (or its failure): the batch in flight ends and is dropped; nothing trains on it."""
        with contextlib.suppress(Exception):  # an error of the batch nothing trains on must not hide train()'s
            self._drop_pending()
        self._pending = self._replaying = None

    # --- inside TRL's scoring: the generation call -----------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], images, num_generations: int):
        """`_generate_single_turn` of a training batch: launch it (and stop), or hand back its completions."""
        if self._launching is not None:
            self._send(self._launching, prompt_ids, images, num_generations)
            raise _Launched
        rollout = self._replaying
        if rollout is None:
            raise RuntimeError("async rollouts: a training batch reached generation without being launched")
        if rollout.prompt_ids != prompt_ids:
            raise RuntimeError("async rollouts: the batch being trained is not the one that was generated")
        return self._receive(rollout)

    def _send(self, rollout: Rollout, prompt_ids, images, num_generations: int) -> None:
        trainer = self.trainer
        vllm_generation = trainer.vllm_generation
        if trainer.state.global_step != trainer._last_loaded_step:  # as TRL's _generate_single_turn
            vllm_generation.sync_weights()
            trainer._last_loaded_step = trainer.state.global_step
        rollout.weights_step = trainer.state.global_step
        rollout.prompt_ids = [list(ids) for ids in prompt_ids]
        if self.check_behaviour_logps:
            rollout.behaviour_weights = snapshot_weights(trainer.model)
        all_prompt_ids = gather_object(rollout.prompt_ids)
        # every rank gathers, with or without images (a collective), as TRL's server mode does
        all_images = gather_object(images if images is not None else [None] * len(prompt_ids))
        if all(image is None for image in all_images):
            all_images = None
        rollout.launched_at = time.perf_counter()
        if trainer.accelerator.is_main_process:
            if self._last_finished is not None:
                rollout.metrics["async/server_idle_s"] = rollout.launched_at - self._last_finished
            rollout.future = self._executor.submit(
                _generate_on_server, vllm_generation, all_prompt_ids, all_images, num_generations,
                _sampling_params(vllm_generation), rollout,
            )
            rollout.future.add_done_callback(lambda _: setattr(self, "_last_finished", rollout.finished_at))

    def _receive(self, rollout: Rollout):
        """The completions of this rank's prompts and vLLM's log-probs of the sampled tokens, as TRL returns them."""
        accelerator = self.trainer.accelerator
        payload = rollout.future.result() if accelerator.is_main_process else None
        payload = broadcast_object_list([payload], from_process=0)[0]
        _, all_completion_ids, all_logprobs = payload
        local = slice(accelerator.process_index * len(rollout.prompt_ids),
                      (accelerator.process_index + 1) * len(rollout.prompt_ids))
        completion_ids = all_completion_ids[local]
        logprobs = [[token[0] for token in sequence] for sequence in all_logprobs[local]] if all_logprobs else None
        return completion_ids, logprobs

    # --- after TRL scored a training batch ---------------------------------------------------------------------------

    def check_behaviour(self, output: dict[str, Any]) -> None:
        """`async/behaviour_logp_gap`: the trainer's log-probs of the batch under the weights that generated it,
        against vLLM's (`async_check_behaviour_logps`)."""
        rollout = self._replaying
        sampled = output.get("sampling_per_token_logps")
        if rollout is None or rollout.behaviour_weights is None or sampled is None:
            return
        trainer = self.trainer
        prompt_ids, completion_ids = output["prompt_ids"], output["completion_ids"]
        completion_mask = output["completion_mask"]
        if "tool_mask" in output:
            completion_mask = completion_mask * output["tool_mask"]
        forward = {key: output.get(key) for key in (
            "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
            "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")}
        with torch.no_grad(), weights_swapped(trainer.model, rollout.behaviour_weights):
            behaviour, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model,
                torch.cat([prompt_ids, completion_ids], dim=1),
                torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1),
                completion_ids.size(1),
                batch_size=trainer.args.per_device_train_batch_size,
                **forward,
            )
        rollout.behaviour_weights = None
        gap = (behaviour - sampled).abs()
        gap = gap[completion_mask.bool() & ~torch.isnan(gap)]
        mean = gap.mean() if gap.numel() else gap.new_zeros(())
        largest = gap.max() if gap.numel() else gap.new_zeros(())
        accelerator = trainer.accelerator
        rollout.metrics["async/behaviour_logp_gap/mean"] = accelerator.gather(mean[None]).mean().item()
        rollout.metrics["async/behaviour_logp_gap/max"] = accelerator.gather(largest[None]).max().item()
