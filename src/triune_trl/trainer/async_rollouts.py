"""One-step off-policy rollouts in vLLM server mode (`async_rollouts: true`): the server generates batch k+1 while
the trainer takes its update on batch k.

A synchronous GRPO step is generate -> score -> log-probs -> update, one after the other, so in server mode the vLLM
GPUs idle while the trainers train and the other way round. Here, at the generation point of batch k, the trainer
(1) waits for batch k, which the server generated during the previous update with the weights before it,
(2) pushes its current weights (one step newer), (3) has the server start batch k+1 with them, in a thread of the
main process, and (4) scores batch k and trains on it while batch k+1 generates. Batch k+1 is therefore exactly one
optimizer step stale (`max_staleness: 1`); `max_staleness: 0` launches each batch at its own generation point and
waits for it, which is the synchronous run, bit for bit. Where one generation batch feeds several optimizer steps
(`steps_per_generation` x `num_iterations` > `gradient_accumulation_steps`, the off-policy Orsta recipes), batch k+1
is launched when the last update on batch k starts, so it is one step stale there too (TRL's own
`old_per_token_logps` covers the updates within a batch, as in the synchronous run). `async/staleness` is the number
of optimizer steps between the weights that generated a batch and the first update on it.

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
waited for the server), `async/server_idle_s` (the server waited for the trainer: from the end of the previous
batch's generation to this batch's launch, an evaluation's generations included), `async/generation_s`,
`async/update_s` (the trainer's time from the end of the previous batch's scoring to this generation point: the
updates, and any logging, evaluation or checkpoint in between);
with `async_check_behaviour_logps`, the trainer's log-probs under the weights that generated the batch
(`async/behaviour_logp_gap/mean|max`, which stays ~0 when the weight sync is right) next to TRL's
`sampling/sampling_logp_difference/*` against the current weights (the one-step drift).

An error of the rollout thread (a dead server) is raised on every rank together, where the batch is received, so
no rank waits in a collective for one that stopped.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import broadcast_object_list, gather_object


class _Launched(BaseException):  # noqa: N818 - not an error: the end of a launch pass through TRL's scoring
    """Raised by `AsyncRollouts.generate` once a launched batch's requests are on their way (a BaseException, so
    that no `except Exception` on the way up can take it for a failure)."""


class RolloutError(RuntimeError):
    """The rollout thread failed on the main process; every other rank raises this with the main process's line."""


class Lookahead:
    """An iterator over the Trainer's epoch iterator that can read ahead, and knows the position of the items it
    yielded last (`remember` of them, held so that their ids are not reused)."""

    def __init__(self, source: Iterator, remember: int):
        self.source = source
        self._ahead: deque = deque()
        self._taken = 0
        self._recent: OrderedDict[int, tuple[Any, int]] = OrderedDict()  # id(item) -> (item, position)
        self._remember = remember
        self._exhausted = False

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self):
        item = self._ahead.popleft() if self._ahead else next(self.source)
        self._recent.pop(id(item), None)
        self._recent[id(item)] = (item, self._taken)
        while len(self._recent) > self._remember:
            self._recent.popitem(last=False)
        self._taken += 1
        return item

    def position(self, item) -> int | None:
        """The position of an item this iterator yielded recently (None: not one of them)."""
        entry = self._recent.get(id(item))
        return entry[1] if entry is not None and entry[0] is item else None

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
    tokenized: tuple | None = None  # (prompt ids, images) of the launch pass, reused when the batch is trained
    prompt_texts: list | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def prompt_texts(prompts: list) -> list:
    """The prompts' roles and text parts (images left out): what must be equal for a batch to be the one launched."""
    def content(message_content):
        if isinstance(message_content, str):
            return message_content
        return tuple(part.get("text") if part.get("type") == "text" else part.get("type") for part in message_content)

    return [prompt if isinstance(prompt, str) else [(m["role"], content(m["content"])) for m in prompt]
            for prompt in prompts]


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
    rollout.finished_at = time.perf_counter()
    rollout.generation_s = rollout.finished_at - start
    return output["prompt_ids"], output["completion_ids"], output["logprobs"]


def _finish(rollout: Rollout) -> None:
    """Wait until the rollout's generation ended, with or without an error (raised where it is received)."""
    if rollout.future is not None:
        wait([rollout.future])


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
    """This process's copy of the trainable weights as they are now (frozen ones do not change): the full tensor where
    the process holds it, and under ZeRO-3 its partition (`ds_tensor`), which is what a later gather reads."""
    snapshot = []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            snapshot.append((None, None))
            continue
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
        self._pending: Rollout | None = None  # launched for a later generation point
        self._launching: Rollout | None = None  # inside a launch pass
        self._replaying: Rollout | None = None  # being scored for training
        self._round_position: int | None = None  # the Lookahead position of the batch being trained
        self._last_sent: Rollout | None = None
        self._last_ready: float | None = None

    # --- the Trainer's DataLoader, read one generation batch ahead ----------------------------------------------

    def batches(self, epoch_iterator: Iterator) -> Lookahead:
        """The iterator `get_batch_samples` reads from: the same items, readable ahead."""
        if self.lookahead is None or self.lookahead.source is not epoch_iterator:
            self._drop_pending()  # a new epoch: nothing is read ahead across epochs
            remember = 2 * (self._generate_every() + self.trainer.args.gradient_accumulation_steps) + 4
            self.lookahead = Lookahead(epoch_iterator, remember)
        return self.lookahead

    # --- the micro-steps of training ---------------------------------------------------------------------------------

    def rows_to_train(self, generation_batch: list[dict]) -> list[dict]:
        """At the generation point of `generation_batch`: its rollout done (generated now if it was not launched
        before); with one optimizer step per batch, the next batch launched with the current weights. Returns the
        rows TRL scores."""
        trainer = self.trainer
        arrived = time.perf_counter()
        position = self.lookahead.position(generation_batch) if self.lookahead is not None else None
        rollout = self._pending if self._pending is not None and self._pending.position == position else None
        if rollout is None:
            self._drop_pending()
            rollout = self._launch(trainer.generation_rows(generation_batch), position)
        self._pending = None
        _finish(rollout)
        trainer_wait = time.perf_counter() - arrived
        self._round_position = position
        self.launch_following()
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

    def launch_following(self) -> None:
        """At the first micro-step of the last update on the batch being trained (its generation point when one
        update trains it): launch the next generation batch with the weights as they are now, if there is one."""
        trainer = self.trainer
        generate_every = self._generate_every()
        accumulation = trainer.current_gradient_accumulation_steps
        if trainer._step % generate_every != max(generate_every - accumulation, 0) or self._pending is not None:
            return
        if self.max_staleness < 1 or self._round_position is None or self.lookahead is None:
            return
        micro_steps_left = (trainer.state.max_steps - trainer.state.global_step) * accumulation - (
            trainer._step % accumulation)
        if micro_steps_left <= generate_every - trainer._step % generate_every:
            return  # the run ends before the next batch would train
        position = self._round_position + generate_every
        following = self.lookahead.at(position)
        if following is not None:
            self._pending = self._launch(trainer.generation_rows(following), position)

    def _generate_every(self) -> int:
        return self.trainer.args.steps_per_generation * self.trainer.num_iterations

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

    def _drop_pending(self) -> None:
        """Let the server finish the batch in flight (its weights must not change under it) and forget it; nothing
        trains on it, so an error of its generation is not raised."""
        self.settle()
        self._pending = None

    def settle(self) -> None:
        """Before any other use of the server (an evaluation's generation and weight sync): the batch in flight ends
        first. Its completions, or its error, are kept for its training step."""
        if self._pending is not None:
            _finish(self._pending)

    def drain(self) -> None:
        """The end of `train()` (or its failure): the batch in flight ends and is dropped; nothing trains on it."""
        self._drop_pending()
        self._replaying = self._round_position = None

    # --- inside TRL's scoring: the generation call -----------------------------------------------------------------

    def tokenize(self, prompts: list, tokenize):
        """TRL's `_tokenize_prompts` (`tokenize`) of a training batch, run once, when the batch is launched (the
        processor's pass over its images included); when the batch is trained, its prompt ids and images are reused.
        The processor's image tensors are dropped: server-mode generation does not use them, and TRL computes the
        forward pass's own when it scores the batch."""
        texts = prompt_texts(prompts)
        if self._launching is not None:
            prompt_ids, images, _ = tokenize(prompts)
            self._launching.tokenized, self._launching.prompt_texts = (prompt_ids, images), texts
            return prompt_ids, images, {}
        rollout = self._replaying
        if rollout is None or rollout.tokenized is None:
            return tokenize(prompts)
        if rollout.prompt_texts != texts:
            raise RuntimeError("async rollouts: the batch being trained is not the one that was generated")
        (prompt_ids, images), rollout.tokenized = rollout.tokenized, None
        return prompt_ids, images, {}

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
        rollout.prompt_ids = prompt_ids  # the training pass gets these same lists back (`tokenize`)
        if self.check_behaviour_logps:
            rollout.behaviour_weights = snapshot_weights(trainer.model)
        all_prompt_ids = gather_object(rollout.prompt_ids)
        # every rank gathers, with or without images (a collective), as TRL's server mode does
        all_images = gather_object(images if images is not None else [None] * len(prompt_ids))
        if all(image is None for image in all_images):
            all_images = None
        rollout.launched_at = time.perf_counter()
        if not trainer.accelerator.is_main_process:
            return
        previous, self._last_sent = self._last_sent, rollout
        if previous is not None and previous.finished_at:  # the previous rollout has ended (it is always waited for)
            rollout.metrics["async/server_idle_s"] = rollout.launched_at - previous.finished_at
        rollout.future = self._executor.submit(
            _generate_on_server, vllm_generation, all_prompt_ids, all_images, num_generations,
            _sampling_params(vllm_generation), rollout,
        )

    def _receive(self, rollout: Rollout):
        """The completions of this rank's prompts and vLLM's log-probs of the sampled tokens, as TRL returns them;
        the thread's error, raised on every rank."""
        accelerator = self.trainer.accelerator
        error: BaseException | None = None
        payload = None
        if accelerator.is_main_process:
            error = rollout.future.exception()
            payload = ("error", f"{type(error).__name__}: {error}") if error is not None else (
                "ok", rollout.future.result())
        status, payload = broadcast_object_list([payload], from_process=0)[0]
        if status == "error":
            if error is not None:
                raise error
            raise RolloutError(f"the main process's vLLM generation failed: {payload}")
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
