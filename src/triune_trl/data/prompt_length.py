"""Every row's prompt length in tokens, image tokens included, before training; and what happens to rows over it.

Nothing else bounds a prompt: TRL 1.16 has no `max_prompt_length`, a 2048² image alone is about 5.3k Qwen2.5-VL
tokens, and a prompt longer than the vLLM server's `max_model_len` is answered with HTTP 400, which TRL does not
retry (only 5xx), so the run would die mid-training. The release's trainer (verl) drops such rows before training
(`filter_overlong_prompts`); `PromptLimit` does the same by default (`overlong_prompts: drop`), with the dropped
rows counted per data source, or stops with one `FILE:ROW` line per row (`overlong_prompts: error`).

Counting needs no model and no pixels: the prompt text is what TRL renders (`trl.apply_chat_template`, one
`<|image_pad|>` per image part) tokenized by the processor's tokenizer, and each image pad then becomes the number
of tokens the processor's own grid arithmetic gives for the image's size (`_get_num_multimodal_tokens`, the
function vLLM calls for the same purpose), from the model-side size the reader computed from the image header.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from triune_trl.data.rows import LocatedProblem, Problem

logger = logging.getLogger(__name__)

OVERLONG_MODES = ("drop", "error")


@dataclass(frozen=True)
class PromptTokens:
    """A prompt's length in tokens: its text (chat template included) and its images."""

    text: int
    image: int

    @property
    def total(self) -> int:
        return self.text + self.image


class PromptTokenCounter:
    """Prompt lengths as the processor will produce them, from messages and model-side image sizes only."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", None) or processor
        self._image_tokens: dict[tuple[int, int], int] = {}

    def image_tokens(self, width: int, height: int) -> int:
        """Tokens one image of this (model-side) size becomes in the prompt."""
        key = (int(width), int(height))
        if key not in self._image_tokens:
            data = self.processor._get_num_multimodal_tokens(image_sizes=[(key[1], key[0])])
            self._image_tokens[key] = int(data["num_image_tokens"][0])
        return self._image_tokens[key]

    def count(
        self, prompts: Sequence[Sequence[Mapping[str, Any]]], image_sizes: Sequence[Sequence[Sequence[int]]]
    ) -> list[PromptTokens]:
        """Per row: messages (TRL conversational) and [width, height] per image -> its length in tokens."""
        from trl.data_utils import apply_chat_template  # at call time: importing trl is slow

        texts = [apply_chat_template({"prompt": list(messages)}, self.processor)["prompt"] for messages in prompts]
        ids = self.tokenizer(texts)["input_ids"] if texts else []
        out = []
        for row_ids, sizes in zip(ids, image_sizes, strict=True):
            # each image is one pad token in the rendered text; the processor expands it to the image's tokens
            out.append(PromptTokens(len(row_ids) - len(sizes), sum(self.image_tokens(*size) for size in sizes)))
        return out


@dataclass
class OverlongReport:
    """What a PromptLimit found: rows per data source, and the rows over the limit (file, row, source, tokens)."""

    max_length: int
    rows_per_source: dict[str, int] = field(default_factory=dict)
    over: list[tuple[str, int, str, PromptTokens]] = field(default_factory=list)

    def dropped_per_source(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, _, source, _ in self.over:
            counts[source] = counts.get(source, 0) + 1
        return counts

    def summary(self) -> str:
        """One line per data source with dropped rows, for the log and the console."""
        dropped = self.dropped_per_source()
        lines = [
            f"dropped {len(self.over)} row(s) whose prompt is over max_prompt_length {self.max_length} tokens "
            "(text + image tokens; --overlong_prompts error lists them instead):"
        ]
        for source in sorted(dropped):
            lines.append(f"  {source}: {dropped[source]} of {self.rows_per_source[source]} rows")
        return "\n".join(lines)


@dataclass(frozen=True)
class PromptLimit:
    """The prompt token budget of a run and what to do with the rows over it ("drop" or "error")."""

    counter: PromptTokenCounter
    max_length: int
    overlong: str = "drop"

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG_MODES:
            raise ValueError(f"overlong_prompts must be one of {', '.join(OVERLONG_MODES)}, got {self.overlong!r}")
        if self.max_length < 1:
            raise ValueError(f"max_prompt_length must be at least 1, got {self.max_length}")

    def problem(self, tokens: PromptTokens) -> Problem:
        return Problem(
            "prompt",
            f"{tokens.total} tokens ({tokens.text} text + {tokens.image} image) is over max_prompt_length "
            f"{self.max_length}; shorten it, use smaller images (--rescale_max_pixels), raise --max_prompt_length "
            "(with the vLLM max model length), or drop such rows with --overlong_prompts drop",
        )

    def check(
        self, files: Sequence[tuple[str, Sequence[int], Sequence[str], Sequence[PromptTokens]]]
    ) -> OverlongReport:
        """Per file (path, row numbers, data sources, token counts): the rows over the limit.

        In "error" mode, rows over the limit raise one DataError with a `FILE:ROW: prompt: ...` line each.
        """
        from triune_trl.data.rows import raise_problems

        report = OverlongReport(self.max_length)
        for path, rows, sources, counts in files:
            for row, source, tokens in zip(rows, sources, counts, strict=True):
                report.rows_per_source[source] = report.rows_per_source.get(source, 0) + 1
                if tokens.total > self.max_length:
                    report.over.append((path, row, source, tokens))
        if self.overlong == "error":
            raise_problems([LocatedProblem(path, row, self.problem(tokens)) for path, row, _, tokens in report.over])
        if report.over:
            logger.warning("%s", report.summary())
            if os.environ.get("RANK", "0") == "0":  # every rank loads the data; one console line is enough
                print(report.summary(), flush=True)
        return report

