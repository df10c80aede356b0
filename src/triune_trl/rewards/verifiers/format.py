"""The `format` verifier: does the completion follow a configured layout of tags (or a regular expression)?

Its accuracy and its format reward are the same 0/1 check, so it can stand alone (a format-only row) or be an
entry of the multi-verifier form (`{"name": "format", "weight": 0.2}`) that rewards layout next to correctness.

Tag layout (default): the stripped completion is `<think>...</think>` then `<answer>...</answer>` (the `tags` in
order), each opening and closing tag exactly once, nothing but whitespace between and around the blocks. With
`newlines: true`, every block's content also starts and ends with a newline: the release's prompt layout
`<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>`. The check is a handful of `str.find` / `str.count`
calls, linear in the completion's length.

With `pattern`, the stripped completion must instead fully match that Python regular expression (DOTALL). The
pattern comes from the data, the text it runs on from the model: a pattern with nested quantifiers can take very
long on adversarial text, and then the per-sample time limit of the router's worker processes applies.

`verifier_parm`:

| parameter | default | meaning |
|---|---|---|
| `tags` | `["think", "answer"]` | tag names of the blocks, in order |
| `newlines` | false | block contents must start and end with a newline |
| `pattern` | none | a regular expression the whole stripped completion must match (replaces `tags`) |

The gold is not used. Sub-score (tag layout only): `format_tags_once`, the share of tags whose opening and
closing forms each occur exactly once (a partial signal while the layout is still wrong).
"""

from __future__ import annotations

import re
from typing import Any

from triune_trl.rewards.params import PARM_FIELD, Param
from triune_trl.rewards.registry import PreparedGold, Scored, ScoringContext, Unverifiable, register_verifier
from triune_trl.rewards.spec import RewardSpec
from triune_trl.rewards.textual import ParamVerifier, Prepared

__all__ = ["FormatVerifier", "tag_layout"]

_TAG_NAME = re.compile(r"[A-Za-z_][\w\-.]*")


def tag_layout(text: str, tags: tuple[str, ...], newlines: bool) -> tuple[bool, float]:
    """(the stripped text is exactly the tag blocks in order, share of tags whose open/close occur once)."""
    once = [text.count(f"<{tag}>") == 1 and text.count(f"</{tag}>") == 1 for tag in tags]
    share = sum(once) / len(tags)
    if not all(once):
        return False, share
    body = text.strip()
    position = 0
    for tag in tags:
        opening, closing = f"<{tag}>", f"</{tag}>"
        if body[position:].lstrip()[: len(opening)] != opening:
            return False, share
        start = body.index(opening, position) + len(opening)
        end = body.find(closing, start)
        if end < 0:
            return False, share
        content = body[start:end]
        if newlines and not (content.startswith("\n") and content.endswith("\n")):
            return False, share
        position = end + len(closing)
    return body[position:].strip() == "", share


@register_verifier("format")
class FormatVerifier(ParamVerifier):
    """1 when the completion follows the configured tag layout or pattern, else 0."""

    PARAMS = (
        Param("tags", "text_list", ("think", "answer"), "tag names of the blocks, in order"),
        Param("newlines", "bool", False, "block contents start and end with a newline"),
        Param("pattern", "text", None, "regular expression the whole stripped completion must match"),
    )

    def check_values(self, params: dict[str, Any]) -> None:
        if params["pattern"] is not None:
            try:
                re.compile(params["pattern"], re.DOTALL)
            except re.error as exc:
                raise Unverifiable(f"not a valid regular expression: {exc}", f"{PARM_FIELD}.pattern") from None
            return
        if not params["tags"]:
            raise Unverifiable("give at least one tag name", f"{PARM_FIELD}.tags")
        for index, tag in enumerate(params["tags"]):
            if not _TAG_NAME.fullmatch(tag):
                raise Unverifiable(f"not a tag name: {tag!r:.80}", f"{PARM_FIELD}.tags[{index}]")

    def gold(self, spec: RewardSpec, params: dict[str, Any]) -> re.Pattern | None:
        return None if params["pattern"] is None else re.compile(params["pattern"], re.DOTALL)

    def _check(self, completion: str, prepared: Prepared) -> Scored:
        if prepared.gold is not None:
            return (1.0 if prepared.gold.fullmatch(completion.strip()) else 0.0), {}
        ok, share = tag_layout(completion, prepared.params["tags"], prepared.params["newlines"])
        return (1.0 if ok else 0.0), {"format_tags_once": share}

    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        return self._check(completion, self.parse_gold(spec))[0]

    def format_score(self, completion: str, spec: RewardSpec, prepared: PreparedGold) -> float:
        if prepared.reason is not None:  # invalid parameters: the sample is unverifiable, its format unknown
            return 0.0
        return self._check(completion, prepared.value)[0]

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        return self._check(completion, gold)
