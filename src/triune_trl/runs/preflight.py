"""`triune preflight --config RECIPE [overrides]`: what a run will meet, in seconds, before any GPU is rented.

First the paths the recipe names, as `triune train` checks them (`checks.check_recipe_paths`): a model or data folder
that does not exist, or a Hub id that cannot load now, is one line within seconds. Then it reads the recipe exactly as
`triune train` does (the same parser and overrides), loads the processor only (no model weights, no GPU), and
reports in one table:

* data: every row checked as training checks it (`FILE:ROW: field: message`), without decoding a pixel;
* prompt tokens per data source (p50 / p99 / max, text and image tokens, `data.prompt_length`) and the rows over
  `max_prompt_length`, with what the run will do with them (`overlong_prompts`);
* batch geometry for `--num-processes` training processes (default: 1 for a `use_cpu` recipe, else 8): completions
  per optimizer step, per generation round, optimizer updates per rollout batch, steps per epoch and in all (0 is
  a FAIL: the run would train nothing);
* host memory per rank for images: one generation round's decoded images (`data.deferred_images`) and its buffered
  `pixel_values` (`image_buffers`);
* the reward servers' /health and the vLLM server's reachability, served model and context (its real
  `max_model_len`, from /v1/models, against max_prompt_length + max_completion_length), when the recipe uses them.

Exit status 1 when anything would stop the run (a bad row, prompts over budget in error mode, every row over budget,
max_prompt_length + max_completion_length over vllm_max_model_length, zero optimizer steps, a reward server or the
vLLM server down, a processor that does not load), else 0.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import DataError, UsageError

CPU_PARSE = ["--use_cpu", "true"]  # parse on this host (no accelerator needed); bf16 stays as the recipe says
HTTP_TIMEOUT = 5.0
MAX_PROBLEM_LINES = 20
OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Report:
    """Rows of the preflight table, grouped in sections: (check, value, status)."""

    sections: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def add(self, section: str, check: str, value: str, status: str = OK) -> None:
        self.sections.setdefault(section, []).append((check, value, status))

    @property
    def failed(self) -> bool:
        return any(status == FAIL for rows in self.sections.values() for _, _, status in rows)


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _mib(n: float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def check_data(report: Report, script_args, training_args, processor) -> dict[str, float]:
    """Data validation and prompt tokens; returns facts the geometry and memory sections need."""
    from ..data import ImageSizing, load_data_config, make_image_resize
    from ..data.loader import kept_positions, prompt_tokens, scan_files
    from ..data.prompt_length import PromptTokenCounter

    sizing = ImageSizing.from_processor(processor)
    rescale = make_image_resize(
        script_args.rescale_rule if script_args.rescale_images else "none",
        script_args.rescale_min_pixels, script_args.rescale_max_pixels,
    )
    config = load_data_config(script_args.data_config, data_root=script_args.data_root)
    splits = ["train"] + (["test"] if training_args.eval_strategy != "no" else [])
    facts: dict[str, float] = {}
    counter = PromptTokenCounter(processor)
    for split in splits:
        specs = config.file_specs(split)
        if not specs:
            report.add("data", f"{split} files", "none listed", FAIL if split == "train" else WARN)
            continue
        scans = scan_files(specs, sizing=sizing, rescale=rescale)
        problems = [problem for scan in scans for problem in scan.problems]
        rows = sum(len(scan.rows) for scan in scans)
        report.add("data", f"{split} files / rows", f"{len(specs)} / {rows}")
        report.add("data", f"{split} problems", f"{len(problems)} (each stops the run)" if problems else "0",
                   FAIL if problems else OK)
        report.details += [str(problem) for problem in problems[:MAX_PROBLEM_LINES]]
        if len(problems) > MAX_PROBLEM_LINES:
            report.details.append(f"... and {len(problems) - MAX_PROBLEM_LINES} more (triune data validate lists all)")
        if problems:
            continue
        counts = prompt_tokens(scans, counter)
        _token_rows(report, split, script_args, scans, counts)
        if split == "train":  # what the run trains on: each file's weight / max_samples draw, overlong rows dropped
            budget = script_args.max_prompt_length
            kept = 0
            for scan, file_counts in zip(scans, counts, strict=True):
                dropped = {k for k, t in enumerate(file_counts) if budget is not None and t.total > budget}
                positions = kept_positions(scan, dropped)
                kept += len(scan.plans) if positions is None else len(positions)
            if script_args.max_train_samples is not None:
                kept = min(kept, script_args.max_train_samples)
            facts["rows"] = kept
            sizes = [size for scan in scans for plan in scan.plans for size in plan.image_sizes]
            facts["image_bytes_per_row"] = sum(3 * w * h for w, h in sizes) / max(rows, 1)
            patch = int(processor.image_processor.patch_size)  # 14 for Qwen2.5-VL, 16 for Qwen3-VL / Qwen3.5
            temporal = int(processor.image_processor.temporal_patch_size)
            facts["pixel_values_per_row"] = sum(w * h // patch**2 for w, h in sizes) * 3 * temporal * patch**2 / max(
                rows, 1)
    return facts


def _token_rows(report: Report, split: str, script_args, scans, counts) -> None:
    """Per-source token distribution rows, and how many rows are over max_prompt_length with what the run does."""
    budget = script_args.max_prompt_length
    per_source: dict[str, list] = {}
    for scan, file_counts in zip(scans, counts, strict=True):
        for plan, tokens in zip(scan.plans, file_counts, strict=True):
            per_source.setdefault(str(plan.data_source), []).append(tokens)
    total_over = 0
    for source in sorted(per_source):
        tokens = per_source[source]
        totals = [t.total for t in tokens]
        over = sum(total > budget for total in totals) if budget is not None else 0
        total_over += over
        value = (f"p50 {percentile(totals, 50)}  p99 {percentile(totals, 99)}  max {max(totals)}  "
                 f"(image p99 {percentile([t.image for t in tokens], 99)})  rows {len(totals)}")
        if over:
            value += f"  over {budget}: {over}"
        report.add(f"prompt tokens ({split})", source, value, WARN if over else OK)
    rows = sum(len(v) for v in per_source.values())
    if budget is None:
        report.add(f"prompt tokens ({split})", "max_prompt_length", "none: no row is checked against vLLM's limit",
                   WARN)
    elif total_over:
        stop = script_args.overlong_prompts == "error" or total_over == rows
        action = "stop the run (overlong_prompts: error)" if script_args.overlong_prompts == "error" else "be dropped"
        if total_over == rows:
            action = "all be dropped: nothing would be left to train on"
        report.add(f"prompt tokens ({split})", f"over max_prompt_length {budget}", f"{total_over} rows would {action}",
                   FAIL if stop else WARN)


def check_geometry(report: Report, training_args, world: tuple[int, str], facts: dict[str, float]) -> dict[str, float]:
    """Completions per step and per round, updates per rollout batch, steps per epoch and in all, for `world`
    (processes, where that number comes from). Zero steps is a FAIL: such a run trains nothing."""
    processes, source = world
    args = training_args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    spg = args.steps_per_generation
    per_round = args.per_device_train_batch_size * processes * spg
    prompts_per_round = per_round // args.num_generations
    updates = spg * args.num_iterations / args.gradient_accumulation_steps
    report.add("batch geometry", "training processes", f"{processes} ({source})")
    report.add("batch geometry", "completions per optimizer step",
               f"{per_step} = {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} "
               f"accumulation x {processes}")
    ok = per_round % args.num_generations == 0
    report.add("batch geometry", "completions per generation round",
               f"{per_round} = {prompts_per_round} prompts x {args.num_generations} generations "
               f"(steps_per_generation {spg})", OK if ok else FAIL)
    report.add("batch geometry", "optimizer updates per rollout batch", f"{updates:g}")
    out = {"prompts_per_round_per_rank": prompts_per_round / processes,
           "completions_per_round_per_rank": per_round / processes}
    rows = facts.get("rows")
    if rows:
        rounds = int(rows // prompts_per_round) if prompts_per_round else 0
        steps_per_epoch = int(rounds * spg * args.num_iterations // args.gradient_accumulation_steps)
        total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        fewer = ""
        if not steps_per_epoch:
            fewer = ("; fewer rows than one round: add rows, or lower per_device_train_batch_size, "
                     "steps_per_generation or --num-processes" if not rounds else "; a round is fewer micro-batches "
                     "than gradient_accumulation_steps: lower it, or raise steps_per_generation")
        report.add("batch geometry", "steps per epoch",
                   f"{steps_per_epoch} ({rounds} rounds of {prompts_per_round} prompts, {int(rows)} rows kept){fewer}",
                   OK if steps_per_epoch else FAIL)
        nothing = "" if total else (": nothing would be trained (0 steps per epoch, above)" if not steps_per_epoch
                                     else ": nothing would be trained; raise --num_train_epochs or set --max_steps")
        report.add("batch geometry", "optimizer steps in all",
                   f"{total}" + (" (max_steps)" if args.max_steps > 0 else f" ({args.num_train_epochs:g} epochs)")
                   + nothing, OK if total else FAIL)
    return out


def check_memory(report: Report, training_args, facts: dict[str, float], geometry: dict[str, float]) -> None:
    """Host memory per rank for the images of one generation round (decoded images + buffered pixel_values)."""
    if "image_bytes_per_row" not in facts:
        return
    decoded = facts["image_bytes_per_row"] * geometry["prompts_per_round_per_rank"]
    # transformers casts float inputs to the half dtype only under DeepSpeed; DDP / FSDP keep the processor's fp32
    half = training_args.bf16 or training_args.fp16
    buffered = facts["pixel_values_per_row"] * geometry["completions_per_round_per_rank"] * (2 if half else 4)
    report.add("host memory per rank (images)", "decoded images of one round",
               f"~{_mib(decoded)} ({geometry['prompts_per_round_per_rank']:g} prompts, mean row)")
    report.add("host memory per rank (images)", "buffered pixel_values of one round",
               f"~{_mib(buffered)} ({geometry['completions_per_round_per_rank']:g} completions, "
               + (f"bf16 under DeepSpeed; ~{_mib(2 * buffered)} in fp32 without it)" if half else "fp32)"))


def _get(url: str, token: str | None = None):
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, timeout=HTTP_TIMEOUT, headers=headers)


def check_reward_servers(report: Report, script_args) -> None:
    if not script_args.uses_reward_servers:
        report.add("servers", "reward servers", "none: rewards in local worker processes")
        return
    from ..server.client import read_client_token
    from ..server.discovery import discover_urls, parse_server_urls

    try:
        urls = parse_server_urls(script_args.reward_server_urls) if script_args.reward_server_urls else []
        if script_args.reward_server_job_ids:
            urls += discover_urls(script_args.reward_server_job_ids, script_args.reward_server_dir)
    except Exception as exc:  # noqa: BLE001 - discovery errors name the folder; show them as they are
        report.add("servers", "reward servers", str(exc), FAIL)
        return
    token = read_client_token(script_args.reward_server_token_file) if script_args.reward_server_token_file else None
    for url in urls:
        try:
            response = _get(f"{url}/health", token)
            body = response.json() if response.status_code == 200 else {}
            if body.get("status") == "ok":
                report.add("servers", f"reward server {url}",
                           f"up, version {body.get('version')}, {body.get('workers')} workers")
            else:
                report.add("servers", f"reward server {url}", f"/health answered HTTP {response.status_code}", FAIL)
        except Exception as exc:  # noqa: BLE001 - any failure to reach it means the run cannot score there
            report.add("servers", f"reward server {url}", f"down: {type(exc).__name__}: {exc}", FAIL)


def generation_mode(training_args) -> str:
    """How the run generates, as preflight reports it: the backend and, in server mode, whether generation overlaps
    the update (`async_rollouts`, triune_trl.trainer.async_rollouts)."""
    if not training_args.use_vllm:
        return "transformers generate"
    if training_args.vllm_mode != "server":
        return f"vLLM {training_args.vllm_mode} mode"
    if not getattr(training_args, "async_rollouts", False):
        return "vLLM server mode, synchronous (generation, then the update)"
    if training_args.max_staleness == 0:
        return "vLLM server mode, async_rollouts with max_staleness 0: synchronous"
    return ("vLLM server mode, asynchronous: the next batch generates during the update, with the weights one step "
            f"older (importance sampling: {training_args.vllm_importance_sampling_mode})")


def check_vllm_server(report: Report, training_args, model_name: str, max_prompt_length: int | None = None) -> None:
    report.add("servers", "generation", generation_mode(training_args))
    if not training_args.use_vllm or training_args.vllm_mode != "server":
        return
    base = training_args.vllm_server_base_url or (
        f"http://{training_args.vllm_server_host}:{training_args.vllm_server_port}"
    )
    base = base.rstrip("/")
    try:
        response = _get(f"{base}/health")
        if response.status_code != 200:
            report.add("servers", f"vLLM server {base}", f"/health answered HTTP {response.status_code}", FAIL)
            return
    except Exception as exc:  # noqa: BLE001
        report.add("servers", f"vLLM server {base}",
                   f"unreachable ({type(exc).__name__}); start local_scripts/vllm_serve.sh first", FAIL)
        return
    served, models = "unknown", []
    try:
        models = _get(f"{base}/v1/models").json().get("data", [])
        served = ", ".join(m.get("id", "?") for m in models)
    except Exception:  # noqa: BLE001 - reachability is what matters; the name is a courtesy
        pass
    same = model_name in served.split(", ")
    report.add("servers", f"vLLM server {base}", f"up, serving {served}",
               OK if same else WARN)
    # the server's own context decides what it accepts (HTTP 400 over it), not the recipe's vllm_max_model_length
    server_len = next((m["max_model_len"] for m in models if isinstance(m.get("max_model_len"), int)), None)
    if server_len is None or max_prompt_length is None:
        return
    need = max_prompt_length + training_args.max_completion_length
    recipe_len = getattr(training_args, "vllm_max_model_length", None)
    note = f"; the recipe's vllm_max_model_length {recipe_len} differs" if recipe_len not in (None, server_len) else ""
    report.add("servers", "vLLM server max_model_len",
               f"{server_len}: max_prompt_length + max_completion_length = {need} "
               + ("fits" if need <= server_len else "does not fit (vLLM refuses such prompts with HTTP 400; lower "
                  "--max_prompt_length or restart the server with a larger --max_model_len)") + note,
               FAIL if need > server_len else (WARN if note else OK))


def render(report: Report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170, highlight=False)  # wide enough for one line per check, also when not a terminal
    table = Table(title="triune preflight", show_lines=False, expand=False)
    table.add_column("section", style="bold")
    table.add_column("check")
    table.add_column("value", overflow="fold")
    table.add_column("status")
    styles = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    for section, rows in report.sections.items():
        for i, (check, value, status) in enumerate(rows):
            table.add_row(section if i == 0 else "", check, value, f"[{styles[status]}]{status}[/]")
        table.add_section()
    console.print(table)
    for line in report.details:
        console.print(line, markup=False)
    console.print("preflight: FAIL (exit 1): the rows marked FAIL would stop the run" if report.failed
                  else "preflight: ok")


GPU_PROCESSES = 8  # the Orsta recipes' one node of training GPUs (their tables: 8, 16, 64)


def training_processes(given: int | None, recipe_values: dict[str, str]) -> tuple[int, str]:
    """The world preflight computes the batch geometry for, and where that number comes from.

    `--num-processes` when given; else the recipe's own: a `use_cpu` recipe is one process (`triune train` on a CPU,
    as tiny_cpu.yaml runs), a GPU recipe GPU_PROCESSES. Read from the recipe before parsing, because preflight parses
    with `--use_cpu true` added (no accelerator needed here).
    """
    if given is not None:
        return given, "--num-processes"
    if str(recipe_values.get("use_cpu", "")).lower() in {"true", "1", "yes"}:
        return 1, "use_cpu recipe: one process; --num-processes N for a multi-process CPU run"
    return GPU_PROCESSES, f"a GPU recipe: one node of {GPU_PROCESSES}; --num-processes N for yours"


def run_preflight(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="triune preflight", add_help=False)
    parser.add_argument("--num-processes", type=int, default=None,
                        help="training processes the run will have (default: 1 for a use_cpu recipe, else 8, the "
                        "Orsta recipes' one node; their tables: 8, 16, 64)")
    ours, recipe_argv = parser.parse_known_args(list(argv))
    from ..checks import check_recipe_paths, recipe_values

    # a missing model or data folder, or a Hub id that cannot load: one line before anything heavy is imported
    check_recipe_paths(recipe_argv)
    processes = training_processes(ours.num_processes, recipe_values(recipe_argv, ["use_cpu"]))
    import datasets
    from transformers import AutoProcessor

    from ..checks import parse_recipe_args
    from .train import check_length_budget, make_parser

    # as `triune train` parses: a mistyped option or recipe key is one UsageError line (cli.main), not a traceback
    script_args, training_args, model_args = parse_recipe_args(
        make_parser(), [*recipe_argv, *CPU_PARSE], "triune preflight"
    )
    datasets.disable_progress_bars()  # the table is the output
    report = Report()
    try:  # the run stops on this before loading anything, so preflight must too
        check_length_budget(script_args, training_args)
    except UsageError as exc:
        report.add("prompt budget", "max_prompt_length + max_completion_length", str(exc), FAIL)
    model = model_args.model_name_or_path
    try:
        processor = AutoProcessor.from_pretrained(model, revision=model_args.model_revision)
        report.add("model", "processor", f"loaded, no weights: {type(processor).__name__} from {model}")
    except Exception as exc:  # noqa: BLE001 - a processor that does not load stops the run
        report.add("model", "processor", f"{model}: {type(exc).__name__}: {exc}", FAIL)
        processor = None
    facts: dict[str, float] = {}
    if processor is not None:
        try:
            facts = check_data(report, script_args, training_args, processor)
        except DataError as exc:
            report.add("data", "data config", str(exc).splitlines()[0], FAIL)
            report.details += str(exc).splitlines()[1:MAX_PROBLEM_LINES]
    geometry = check_geometry(report, training_args, processes, facts)
    check_memory(report, training_args, facts, geometry)
    check_reward_servers(report, script_args)
    check_vllm_server(report, training_args, model, script_args.max_prompt_length)
    render(report)
    return 1 if report.failed else 0
