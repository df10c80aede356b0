"""What the trainer changes at the boundary with vLLM: the prompt ids it sends, the log-probs it takes back.

Prompt ids. TRL 1.16 tokenizes an image prompt once, with the processor, which expands each image's placeholder
into one `<|image_pad|>` per vision token (the forward pass needs that), and sends those same ids to a colocated
vLLM engine together with the images. vLLM runs its own multimodal processor and expands every placeholder again:
the first pad of each run becomes a full run and the rest stay, so vLLM generates from a prompt with N-1 extra
untrained `<|image_pad|>` embeddings per image (huggingface/trl#6294, open in 1.16). vLLM expects one placeholder
per image, so each run of pads is collapsed to one before the call. (Server mode is different: TRL computes the
image features itself and places them on the expanded runs, so its ids stay as they are.)

Log-probs. A completion token that the trainer replaced (a generated vision pad, see the trainer's override 5) is
not the token vLLM scored, and the tokens after it were sampled after a prefix the trainer does not score: their
vLLM log-probs are dropped, which TRL treats as tokens vLLM could not score.
"""

from __future__ import annotations

from collections.abc import Collection


def collapse_placeholder_runs(ids: list[int], placeholders: Collection[int]) -> list[int]:
    """`ids` with every run of one placeholder token (e.g. an image's `<|image_pad|>` x N) cut to a single token."""
    collapsed: list[int] = []
    for token in ids:
        if token in placeholders and collapsed and collapsed[-1] == token:
            continue
        collapsed.append(token)
    return collapsed


def drop_replaced_logprobs(
    logprobs: list[list[float | None]], generated_ids: list[list[int]], completion_ids: list[list[int]]
) -> list[list[float | None]]:
    """Sampling log-probs with `None` from the first token that was replaced in `completion_ids` to the row's end.

    `None` is how TRL 1.16 marks a token vLLM could not score: it becomes NaN, the importance sampling ratio there is
    exactly 1 and the position is left out of `sampling/sampling_logp_difference`. vLLM's log-prob at a replaced
    position belongs to the token it generated (an image pad), not to the replacement the trainer scores, and every
    later log-prob is conditioned on that pad, a prefix the trainer never sees (measured: a gap of 0.09 on the token
    right after one, against <= 0.006 elsewhere). Ratios built from them would correct for a sequence nobody trains on.
    """
    dropped = []
    for row, generated, completion in zip(logprobs, generated_ids, completion_ids, strict=True):
        if len(row) != len(generated) or len(generated) != len(completion):
            raise ValueError(f"{len(row)} log-probs for {len(generated)} generated and {len(completion)} kept tokens")
        changed = [i for i, (old, new) in enumerate(zip(generated, completion, strict=True)) if old != new]
        first = changed[0] if changed else len(row)
        dropped.append([*row[:first], *([None] * (len(row) - first))])
    return dropped
