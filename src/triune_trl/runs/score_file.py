"""`triune reward score`: score a JSONL file of completions offline, with the same verifiers as training.

A top-level module rather than part of `rewards/`, because it also scores on reward servers through
`server/client.py`, and `server` builds on `rewards` (never the reverse).

Input, one JSON object per line (blank lines are skipped):
`{"completion": str, "data_source": str, "reward_model": {...Orsta struct...}, "image_size": [w, h],
"step": int, "total_steps": int}`; `data_source`, `image_size`, `step` and `total_steps` are optional.
Output, one line per input line in the same order: the input object plus `final_reward`, `format_reward`,
`accuracy_reward` (null when unverifiable), `unverifiable_reason` and the verifier's sub-scores.

Every line is validated before anything is written, and problems a file can be fixed for stop the command with
`InputLineError(path, line, message)`: bad JSON, a missing or mistyped field, a `reward_model` that does not parse,
and inputs a row provably needs — a detection (or thresholded grounding) row needs `step` and `total_steps` when
the threshold is "dynamic" (pass a fixed threshold or "average" to score without progress) and `image_size` when
its coordinates are normalised. What only scoring can tell (an unknown verifier, a gold that does not parse, a
completion that runs past the time limit) is reported per line as unverifiable, like in training. Lines are scored
in `workers` worker processes with a per-completion `time_limit`, like training (`rewards/pool.py`). The output is
written to a temporary file and moved into place, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from triune_trl.errors import InputLineError, RewardSpecError
from triune_trl.rewards.iou_schedule import IouThreshold, parse_iou_threshold
from triune_trl.rewards.pool import Job, ScoringPool, score_jobs_in_process
from triune_trl.rewards.registry import ScoringContext, image_size_pair
from triune_trl.rewards.router import DEFAULT_TIME_LIMIT, DEFAULT_WORKERS
from triune_trl.rewards.scoring import spec_key
from triune_trl.rewards.spec import RewardSpec

__all__ = ["register", "score_jsonl"]

BOX_VERIFIERS = ("detection", "grounding")  # verifiers that read the IoU threshold and the image size


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(record: Any, threshold: IouThreshold) -> str | None:
    """Why this parsed line cannot be scored, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if "completion" not in record:
        return "missing 'completion'"
    if not isinstance(record["completion"], str):
        return f"'completion' must be a string, got {type(record['completion']).__name__}"
    if "reward_model" not in record:
        return "missing 'reward_model'"
    if not isinstance(record["reward_model"], Mapping):
        return f"'reward_model' must be an object, got {type(record['reward_model']).__name__}"
    try:
        spec = RewardSpec.from_dict(record["reward_model"])
    except RewardSpecError as exc:
        return str(exc)
    if record.get("data_source") is not None and not isinstance(record["data_source"], str):
        return "'data_source' must be a string"

    size = record.get("image_size")
    if size is not None and not (isinstance(size, list) and image_size_pair(size) is not None):
        return f"'image_size' must be [width, height] with two positive numbers, got {size!r:.80}"

    step, total = record.get("step"), record.get("total_steps")
    if step is not None and not (_is_int(step) and step >= 0):
        return f"'step' must be an integer >= 0, got {step!r:.40}"
    if total is not None and not (_is_int(total) and total > 0):
        return f"'total_steps' must be an integer > 0, got {total!r:.40}"
    if (step is None) != (total is None):
        return "'step' and 'total_steps' must be given together"

    for view in [spec.component(entry) for entry in spec.entries] if spec.is_multi else [spec]:
        if view.verifier not in BOX_VERIFIERS:
            continue
        thresholded = view.verifier == "detection" or view.verifier_parm.extra.get("mode") != "continuous"
        if threshold == "dynamic" and step is None and thresholded:
            return (
                f"a {view.verifier} row needs 'step' and 'total_steps' for the dynamic IoU threshold "
                "(or score with a fixed threshold or 'average')"
            )
        if view.verifier_parm.det_verifier_normalized and size is None:
            return f"a {view.verifier} row with det_verifier_normalized needs 'image_size' [width, height] of the image"
    return None


def _read_records(path: Path, threshold: IouThreshold) -> list[dict[str, Any]]:
    """All records of the file, validated; raises InputLineError at the first bad line."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise InputLineError(str(path), number, f"not valid JSON: {exc}") from None
            problem = _check_record(record, threshold)
            if problem is not None:
                raise InputLineError(str(path), number, problem)
            records.append(record)
    return records


def _jobs(records: list[dict[str, Any]], threshold: IouThreshold) -> list[Job]:
    jobs = []
    for record in records:
        size = record.get("image_size")
        ctx = ScoringContext(
            image_size=None if size is None else tuple(size),
            step=record.get("step"),
            total_steps=record.get("total_steps"),
            iou_threshold=threshold,
        )
        jobs.append(Job(record["completion"], record["reward_model"], ctx, spec_key(record["reward_model"])))
    return jobs


def _score_on_servers(
    records: list[dict[str, Any]], threshold: IouThreshold, servers: str, token_file: str | os.PathLike | None
) -> list[dict[str, Any]]:
    from triune_trl.server.client import RemoteRewardRouter

    # score_items runs its own event loop and closes that loop's HTTP client when it returns
    return RemoteRewardRouter(servers, iou_threshold=threshold, token_file=token_file).score_items(records)


def score_jsonl(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    iou_threshold: IouThreshold | str = "dynamic",
    workers: int = DEFAULT_WORKERS,
    time_limit: float = DEFAULT_TIME_LIMIT,
    progress: bool = False,
    servers: str | None = None,
    token_file: str | os.PathLike | None = None,
) -> int:
    """Score every line of `input_path` into `output_path`; returns the number of lines written.

    `workers` processes score with a per-completion `time_limit` (seconds); `workers=0` scores in this process.
    With `servers` (reward server URLs, `"http://a:8192|http://b:8192"`) the lines are scored there instead, by the
    trainer's client (`server/client.py`, failover included), with `token_file` as the bearer token.
    `progress` shows a progress bar on stderr.
    """
    threshold = parse_iou_threshold(iou_threshold)
    source, target = Path(input_path), Path(output_path)
    records = _read_records(source, threshold)
    if servers:
        all_scores = _score_on_servers(records, threshold, servers, token_file)
    else:
        jobs = _jobs(records, threshold)
        with tqdm(total=len(jobs), desc="scoring", unit="completion", disable=not progress) as bar:
            if workers == 0:
                results = score_jobs_in_process(jobs)
                bar.update(len(jobs))
            else:
                with ScoringPool(workers, time_limit) as pool:
                    results = pool.score(jobs, progress=bar)
        all_scores = [result.scores for result in results]
    lines = [
        json.dumps({**record, **scores}, ensure_ascii=False) for record, scores in zip(records, all_scores, strict=True)
    ]

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return len(lines)


def _score(args: argparse.Namespace) -> int:
    if args.token_file and not args.server:
        print("triune: error: --token-file is for reward servers: add --server URL", file=sys.stderr)
        return 2
    count = score_jsonl(
        args.input,
        args.output,
        iou_threshold=parse_iou_threshold(args.iou_threshold),
        workers=args.workers,
        time_limit=args.time_limit,
        progress=True,
        servers=args.server,
        token_file=args.token_file,
    )
    print(f"scored {count} completions -> {args.output}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `triune reward` and its subcommands to the top-level parser."""
    reward = commands.add_parser("reward", help="reward tools").add_subparsers(dest="reward_command", required=True)

    score = reward.add_parser("score", help="score completions offline through the same router as training")
    score.add_argument("--input", required=True, help="JSONL: completion, data_source, reward_model, ...")
    score.add_argument("--output", required=True, help="JSONL with the input fields plus every reward")
    score.add_argument(
        "--iou-threshold",
        default="dynamic",
        help="'dynamic' (uses each line's step/total_steps), 'average' or a number",
    )
    score.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"worker processes that score (default {DEFAULT_WORKERS}; 0 scores in this process, without time limit)",
    )
    score.add_argument(
        "--time-limit",
        type=float,
        default=DEFAULT_TIME_LIMIT,
        help=f"seconds one completion may take before it is reported unverifiable (default {DEFAULT_TIME_LIMIT:g})",
    )
    score.add_argument(
        "--server",
        help="score on reward servers (`triune serve-rewards`) instead: base URLs separated by '|' "
        "(failover as in training; --workers and --time-limit are the servers' own then)",
    )
    score.add_argument("--token-file", help="with --server: a file holding the servers' bearer token")
    score.set_defaults(func=_score)
