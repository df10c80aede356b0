"""Reward throughput on an Orsta-shaped batch: the router (in process, 1 and 2 workers) against a per-sample reference.

The batch: 8,192 completions in 1,024 prompt groups of 8 rollouts (GRPO's layout), 57% of them on `mathverify`
rows and 43% on `detection` rows (the real v3det spec: label-first weight 1, completeness 0.3, normalised
coordinates), each group mixing correct, wrong and malformed completions: for math, the gold value in another
form, a different value, no `\\boxed{}`, a cut-off box, garbage; for detection, the gold boxes in pixels with some
jitter, wrong boxes or labels, truncated JSON, single quotes, no answer block, thousands of boxes.

The reference is the straightforward per-sample computation the release's reward server does: for every completion
parse the gold and the prediction with math-verify and verify, or parse both box lists, match them at all 11 IoU
thresholds with both strategies and build pycocotools `COCO` / `COCOeval` objects for the mAP. The router dedups
identical completions, parses each group's gold once, remembers math-verify verdicts per gold, computes mAP
directly and scores in worker processes. Every score of every variant is checked against the reference (equal to
1e-9 unless the router reports the sample as unverifiable, e.g. a math-verify timeout the release would have scored
0). Wall-clock seconds are the fastest of `--repeats` runs (fresh workers each time); CPU seconds (this process
plus the workers) show the work done independently of other load on the machine, and "own cores" the speedup when
every worker has a core to itself (the parent's CPU time plus the busiest worker's, against the reference's CPU
time): on a machine whose cores are shared with other jobs, the wall-clock gain of a second worker depends on
whether a second core happens to be free.

    python benchmarks/rewards.py                # full run, writes benchmarks/results/latest/rewards.json
    python benchmarks/rewards.py --size 1024    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from triune_trl.rewards import RewardRouter
from triune_trl.rewards.boxes import iou_matrix, normalize_boxes, parse_answer_boxes
from triune_trl.rewards.coco_map import CocoMap, coco_map
from triune_trl.rewards.coco_reference import pycocotools_map as reference_map
from triune_trl.rewards.iou_schedule import IOU_THRESHOLDS, dynamic_iou_threshold
from triune_trl.rewards.scoring import combine_rewards
from triune_trl.rewards.spec import RewardSpec
from triune_trl.rewards.verifiers.detection import match_iou_first, match_label_first, size_penalty, threshold_scores
from triune_trl.rewards.verifiers.mathverify import math_format_reward

GROUP = 8
MATH_SHARE = 0.57
STEP, TOTAL_STEPS = 30, 100  # dynamic IoU threshold 0.99, as for most of a run
RESULTS = Path(__file__).resolve().parent / "results" / "latest" / "rewards.json"  # git-ignored (README)
REFERENCE = "reference (per sample, pycocotools + math-verify)"
DET_RATIO = {"iou_max_label_first": 1.0, "iou_max_iou_first": 0.0, "iou_completeness": 0.3, "map": 0.0,
             "map50": 0.0, "map75": 0.0}  # fmt: skip
LABELS = ["dog", "cat", "person", "car", "traffic light", "red mug", "bicycle", "chair", "bird", "umbrella"]
WORDS = ("so we compute the area of the triangle with base and height then divide by two which gives the result "
         "let us check the units again and simplify the fraction carefully before writing").split()  # fmt: skip

# ------------------------------------------------------------------------------------------------ the batch


def _reasoning(rng: random.Random, low: int = 30, high: int = 220) -> str:
    count = rng.randint(low, high)
    return " ".join(rng.choice(WORDS) if rng.random() > 0.15 else str(rng.randint(0, 999)) for _ in range(count))


def _math_gold(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold latex, equal forms, wrong forms)."""
    kind = rng.randrange(4)
    if kind == 0:
        n = rng.randint(-50, 500)
        return str(n), [str(n), f"{n}.0"], [str(n + rng.randint(1, 9)), str(-n - 1)]
    if kind == 1:
        a, b = rng.randint(1, 9), rng.choice([2, 4, 5, 8, 10])
        return f"\\frac{{{a}}}{{{b}}}", [f"\\frac{{{a}}}{{{b}}}", f"{a / b:g}"], [f"\\frac{{{b}}}{{{a}}}", f"{a + b}"]
    if kind == 2:
        n = rng.choice([2, 3, 5, 7])
        k = rng.randint(2, 6)
        return f"{k}\\sqrt{{{n}}}", [f"{k}\\sqrt{{{n}}}", f"\\sqrt{{{k * k * n}}}"], [f"{k}\\sqrt{{{n + 1}}}", str(k)]
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"x^2 + {a}x + {b}", [f"x^2 + {a}x + {b}", f"{b} + {a}x + x^2"], [f"x^2 + {b}x + {a + b}", f"x + {a}"]


def _math_group(rng: random.Random) -> tuple[dict, list[str]]:
    gold, equal, wrong = _math_gold(rng)
    closed = rng.random() < 0.3  # close-form rows weigh the think/answer format
    spec = {"answer": gold, "ground_truth": f"\\boxed{{{gold}}}", "accuracy_ratio": 1.0,
            "format_ratio": 0.1 if closed else 0.0, "verifier": "mathverify",
            "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None}}  # fmt: skip
    completions = []
    for _ in range(GROUP):
        draw = rng.random()
        answer = rng.choice(equal) if draw < 0.45 else rng.choice(wrong)
        body = _reasoning(rng)
        if draw < 0.8:
            text = f"{body}. The answer is \\boxed{{{answer}}}."
        elif draw < 0.88:
            text = f"{body}. The answer is {answer}."  # no box, no anchor
        elif draw < 0.94:
            text = f"{body}. The answer is \\boxed{{{answer}"  # cut off by the length limit
        elif draw < 0.97:
            text = ""
        else:
            text = "\\boxed{" + "\\frac{1}{" * rng.randint(3, 8) + "2" + "}" * rng.randint(0, 9)  # malformed tower
        if closed and rng.random() < 0.7:
            text = f"<think>\n{body}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
        completions.append(text)
    return spec, completions


def _detection_group(rng: random.Random) -> tuple[dict, list[str], list[int]]:
    width, height = rng.choice([(1000, 800), (1288, 966), (644, 980), (1400, 1050)])
    gold = []
    for _ in range(rng.randint(1, 8)):
        x1, y1 = rng.randint(0, 800), rng.randint(0, 800)
        gold.append({"bbox_2d": [x1, y1, x1 + rng.randint(20, 199), y1 + rng.randint(20, 199)],
                     "label": rng.choice(LABELS)})  # fmt: skip
    spec = {"answer": json.dumps(gold), "ground_truth": "<answer>\n" + repr(gold) + "\n</answer>",
            "accuracy_ratio": 1.0, "format_ratio": 0.1, "verifier": "detection",
            "verifier_parm": {"det_verifier_normalized": True, "det_reward_ratio": DET_RATIO}}  # fmt: skip

    def to_pixels(box: dict, jitter: int) -> dict:
        x1, y1, x2, y2 = box["bbox_2d"]
        px = [round(v / 1000 * size) + rng.randint(-jitter, jitter) for v, size in
              ((x1, width), (y1, height), (x2, width), (y2, height))]  # fmt: skip
        return {"bbox_2d": [min(px[0], px[2]), min(px[1], px[3]), max(px[0], px[2]), max(px[1], px[3])],
                "label": box["label"]}  # fmt: skip

    completions = []
    for _ in range(GROUP):
        draw = rng.random()
        think = f"<think>\n{_reasoning(rng, 10, 60)}\n</think>\n"
        if draw < 0.4:
            boxes = [to_pixels(box, rng.choice([0, 0, 2, 6])) for box in gold if rng.random() < 0.9]
        elif draw < 0.7:
            boxes = [to_pixels(box, 40) for box in gold] + [
                {"bbox_2d": [10, 10, 60, 60], "label": rng.choice(LABELS)} for _ in range(rng.randint(0, 3))
            ]
        elif draw < 0.97:
            boxes = None
        else:
            boxes = [to_pixels(rng.choice(gold), 30) for _ in range(rng.randint(200, 2000))]  # thousands of boxes
        if boxes is not None:
            text = f"{think}<answer>\n{json.dumps(boxes)}\n</answer>"
        else:
            kind = rng.randrange(4)
            listed = json.dumps([to_pixels(box, 5) for box in gold])
            text = [
                f"{think}<answer>\n{listed[: rng.randint(1, len(listed))]}\n</answer>",  # truncated JSON
                f"{think}<answer>\n{listed.replace(chr(34), chr(39))}\n</answer>",  # single quotes
                f"{think}{listed}",  # no answer block
                f"{think}<answer>\nI see a {rng.choice(LABELS)}.\n</answer>",
            ][kind]
        completions.append(text)
    return spec, completions, [width, height]


def make_batch(size: int, seed: int = 0) -> list[dict[str, Any]]:
    """`size` rows (a multiple of 8): completion, reward_model, image_size, in prompt groups of 8."""
    rng = random.Random(seed)
    groups = size // GROUP
    math_groups = round(groups * MATH_SHARE)
    kinds = ["math"] * math_groups + ["detection"] * (groups - math_groups)
    rng.shuffle(kinds)
    rows = []
    for kind in kinds:
        if kind == "math":
            spec, completions = _math_group(rng)
            size_ = None
        else:
            spec, completions, size_ = _detection_group(rng)
        rows.extend({"completion": c, "reward_model": spec, "image_size": size_} for c in completions)
    return rows


# ------------------------------------------------------------------------------------------------ the reference


def pycocotools_map(preds, gold) -> CocoMap:
    """The release's `pack_for_map_score` (one COCO dataset and COCOeval per call) on parsed `Box` lists."""
    return reference_map(
        [box.coords for box in preds], [box.label for box in preds],
        [box.coords for box in gold], [box.label for box in gold],
    )  # fmt: skip


def _reference_detection(text: str, spec: RewardSpec, image_size: list[int]) -> float:
    ratio = spec.verifier_parm.det_reward_ratio
    fmt = 1.0 if text.count("\n<answer>\n") and text.count("\n</answer>") == 1 and parse_answer_boxes(text) else 0.0
    gold = parse_answer_boxes(spec.ground_truth)
    preds = parse_answer_boxes(text)
    if preds is not None:
        preds = normalize_boxes(preds, *image_size) or None
    if preds is None:
        return combine_rewards(0.0, fmt, spec.accuracy_ratio, spec.format_ratio)
    ious = iou_matrix(preds, gold)
    pred_labels, gold_labels = [b.label for b in preds], [b.label for b in gold]
    per_tau = {}  # the release scores both strategies at all 11 thresholds for every completion
    for name, matcher in (("iou_first", match_iou_first), ("label_first", match_label_first)):
        for tau in IOU_THRESHOLDS:
            matches = matcher(ious, pred_labels, gold_labels, tau)
            per_tau[name, tau] = threshold_scores(matches, len(preds), len(gold), ratio.iou_completeness).score
    maps = pycocotools_map(preds, gold)
    tau = dynamic_iou_threshold(STEP, TOTAL_STEPS)
    penalty = size_penalty(len(preds), len(gold))
    numerator = (
        per_tau["iou_first", tau] * penalty * ratio.iou_max_iou_first
        + per_tau["label_first", tau] * penalty * ratio.iou_max_label_first
        + maps.map * penalty * ratio.map
        + maps.map50 * penalty * ratio.map50
        + maps.map75 * penalty * ratio.map75
    )
    denominator = ratio.accuracy_denominator
    accuracy = numerator / denominator if denominator > 0 else 0.0
    return combine_rewards(accuracy, fmt, spec.accuracy_ratio, spec.format_ratio)


def _reference_math(text: str, spec: RewardSpec) -> float:
    import math_verify
    from latex2sympy2_extended import NormalizationConfig

    prediction, solution = text.lower(), spec.ground_truth.lower()
    gold = math_verify.parse(solution, extraction_mode="first_match")
    accuracy = 0.0
    if gold:
        config = math_verify.LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False, malformed_operators=False, basic_latex=True, boxed="all", units=True
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
        answer = math_verify.parse(prediction, extraction_config=[config], extraction_mode="first_match")
        accuracy = float(math_verify.verify(gold, answer))
    return combine_rewards(accuracy, math_format_reward(text), spec.accuracy_ratio, spec.format_ratio)


def reference_score(row: dict[str, Any]) -> float:
    """One completion, the release's way: everything parsed and computed for this sample alone."""
    spec = RewardSpec.from_dict(row["reward_model"])
    if spec.verifier == "mathverify":
        return _reference_math(row["completion"], spec)
    return _reference_detection(row["completion"], spec, row["image_size"])


# ------------------------------------------------------------------------------------------------ timing


def _router_call(router: RewardRouter, rows: list[dict[str, Any]]) -> list[float | None]:
    return router(
        prompts=["p"] * len(rows),
        completions=[row["completion"] for row in rows],
        reward_model=[row["reward_model"] for row in rows],
        image_sizes=[[row["image_size"]] if row["image_size"] else [] for row in rows],
    )


def _agreement(reference: list[float], got: list[float | None]) -> dict[str, int]:
    counts = Counter()
    for expected, value in zip(reference, got, strict=True):
        if value is None:
            counts["unverifiable"] += 1
        elif abs(expected - value) <= 1e-9:
            counts["equal"] += 1
        else:
            counts["different"] += 1
    return dict(counts)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; the workers are the forkserver's children, not ours)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(size: int, seed: int, repeats: int) -> dict[str, Any]:
    rows = make_batch(size, seed)
    keys = {(json.dumps(r["reward_model"], sort_keys=True), r["completion"], str(r["image_size"])) for r in rows}
    distinct = len(keys)
    math_rows = sum(r["reward_model"]["verifier"] == "mathverify" for r in rows)
    print(f"{len(rows)} completions: {math_rows} mathverify ({math_rows / len(rows):.0%}), "
          f"{len(rows) - math_rows} detection; {distinct} distinct", file=sys.stderr)  # fmt: skip

    variants: dict[str, dict[str, Any]] = {}
    started, cpu = time.perf_counter(), time.process_time()
    reference = [reference_score(row) for row in tqdm(rows, desc="reference", unit="completion")]
    variants[REFERENCE] = {"seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}

    for label, workers in (("router, in process", 0), ("router, 1 worker", 1), ("router, 2 workers", 2)):
        runs = []
        for _ in range(repeats):  # best of `repeats`, each with fresh workers (no cache carried over)
            router = RewardRouter(iou_threshold="dynamic", workers=workers)
            router.set_progress(STEP, TOTAL_STEPS)
            try:
                _router_call(router, make_batch(64, seed + 1))  # start the workers, load the modules (once per run)
                pids = [worker.process.pid for worker in router.pool._pool] if workers else []
                before, cpu = [_cpu_seconds(pid) for pid in pids], time.process_time()
                started = time.perf_counter()
                got = _router_call(router, rows)
                seconds = time.perf_counter() - started
                per_worker = [_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
                parent_cpu = time.process_time() - cpu
                runs.append({"seconds": seconds, "cpu_seconds": parent_cpu + sum(per_worker),
                             # wall time if every worker had a core of its own: the busiest worker's CPU time
                             "own_core_seconds": parent_cpu + max(per_worker, default=0.0),
                             "agreement": _agreement(reference, got), "status": dict(router.last_status)})  # fmt: skip
            finally:
                router.close()
        best = min(runs, key=lambda run: run["seconds"])
        variants[label] = {**best, "all_seconds": [run["seconds"] for run in runs]}
        print(f"{label}: {[round(run['seconds'], 2) for run in runs]} s", file=sys.stderr)

    base, base_cpu = variants[REFERENCE]["seconds"], variants[REFERENCE]["cpu_seconds"]
    for variant in variants.values():
        variant["completions_per_s"] = len(rows) / variant["seconds"]
        variant["speedup_vs_reference"] = base / variant["seconds"]
        variant["cpu_speedup_vs_reference"] = base_cpu / variant["cpu_seconds"]
        if "own_core_seconds" in variant:
            variant["own_core_speedup_vs_reference"] = base_cpu / variant["own_core_seconds"]

    detection = [r for r in rows if r["reward_model"]["verifier"] == "detection"]
    map_cases = []
    for row in detection:
        preds = parse_answer_boxes(row["completion"])
        preds = normalize_boxes(preds, *row["image_size"]) if preds else []
        if preds:
            map_cases.append((preds, parse_answer_boxes(row["reward_model"]["ground_truth"])))
    started = time.perf_counter()
    for preds, gold in map_cases:
        pycocotools_map(preds, gold)
    cocotools_s = time.perf_counter() - started
    started = time.perf_counter()
    for preds, gold in map_cases:
        coco_map([b.coords for b in preds], [b.label for b in preds], [b.coords for b in gold], [b.label for b in gold])
    ours_s = time.perf_counter() - started

    return {
        "completions": len(rows),
        "mathverify_share": math_rows / len(rows),
        "distinct_completions": distinct,
        "iou_threshold": f"dynamic at step {STEP}/{TOTAL_STEPS} (tau {dynamic_iou_threshold(STEP, TOTAL_STEPS)})",
        "variants": variants,
        "single_image_map": {
            "cases": len(map_cases),
            "pycocotools_ms_per_case": 1000 * cocotools_s / max(1, len(map_cases)),
            "vectorised_ms_per_case": 1000 * ours_s / max(1, len(map_cases)),
        },
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": os.getloadavg()[0],  # other processes sharing the cores skew the ratios
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192, help="completions (a multiple of 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="router runs per variant; the fastest is reported")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.size - args.size % GROUP, args.seed, args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    machine = result["machine"]
    print(f"\n{result['completions']} completions ({result['mathverify_share']:.0%} mathverify), "
          f"{result['distinct_completions']} distinct; {machine['cpus']} CPUs, "
          f"load average {machine['load_average_1min_at_end']:.1f}")  # fmt: skip
    print(f"{'variant':52s} {'seconds':>8s} {'compl/s':>9s} {'vs ref':>7s} {'CPU-s':>7s} {'CPU vs ref':>10s}"
          f" {'own cores':>9s}  agreement with the reference")  # fmt: skip
    for label, variant in result["variants"].items():
        agreement = variant.get("agreement", "")
        own = variant.get("own_core_speedup_vs_reference")
        print(f"{label:52s} {variant['seconds']:8.2f} {variant['completions_per_s']:9.0f} "
              f"{variant['speedup_vs_reference']:6.1f}x {variant['cpu_seconds']:7.2f} "
              f"{variant['cpu_speedup_vs_reference']:9.1f}x {'' if own is None else f'{own:8.1f}x'}  {agreement}")
    print("own cores: the reference's CPU time over the parent's plus the busiest worker's CPU time, i.e. the speedup"
          " when each worker has a core of its own (the machine's other jobs do not count)")  # fmt: skip
    m = result["single_image_map"]
    print(f"single-image mAP on {m['cases']} cases: pycocotools {m['pycocotools_ms_per_case']:.2f} ms, "
          f"vectorised {m['vectorised_ms_per_case']:.2f} ms per case")  # fmt: skip
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
