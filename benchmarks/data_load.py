"""Load + validate 47,000 Orsta-shaped rows: wall time and peak RSS, against the release's way of reading them.

    python benchmarks/data_load.py [--out DIR] [--rows 47000]

1. Builds (once; reused when DIR already holds it) a 47,000-row set in the Orsta-Data-47k layout and schema: the
   paper's sources and task mix (27.1K reasoning rows on mathverify; 19.9K perception rows, the paper's 20.6K
   trimmed so the total is 47,000: detection and grounding on the detection verifier, counting and OCR on
   mathverify as in the release), small PNG images (48-160 px a side, 5%
   text-only rows, 5% two-image rows), math golds drawn from a realistic spread (integers, choice letters,
   decimals, fractions, radicals, expressions; about a quarter of the rows repeat an earlier gold, as multiple
   choice and small counts do in real data), detection golds with 1-6 boxes.
2. Runs each measurement in a fresh child process (so peak RSS is that of the measured work alone, imports
   included) with an empty `datasets` cache (the Arrow copy of the images is part of the cost):
   - `reference`: what the release's loader does, `datasets.load_dataset("parquet")` per file and
     `concatenate_datasets`, with no validation at all;
   - `validate`: `triune data validate` over the files (scan + every check; builds nothing, writes nothing);
   - `load`: `load_split` as training calls it (scan + every check + the lazily decoded dataset), then one
     GRPO-sized batch of 64 rows read (decoded) to show the images come on access.
3. Prints a table and writes benchmarks/results/latest/data_load.json. Goal on the project's machine (2 shared CPU
   cores): load + validate at most 60 s and 2 GiB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest" / "data_load.json"  # git-ignored (README)
GOAL_SECONDS, GOAL_BYTES = 60.0, 2 * 1024**3

# (task, source, data_source, verifier, rows) - the paper's sources; rows sum to 47,000.
FILES = [
    ("math", "mmmath", "mm_math", "mathverify", 3539),
    ("math", "geometry3k", "geometry3k", "mathverify", 2101),
    ("math", "mmk12", "mmk12", "mathverify", 5862),
    ("puzzle", "puzzlevqa", "puzzlevqa", "mathverify", 2648),
    ("puzzle", "algopuzzlevqa", "algopuzzlevqa", "mathverify", 1500),
    ("puzzle", "visualpuzzles", "visualpuzzles", "mathverify", 1000),
    ("science", "scienceqa", "scienceqa", "mathverify", 2500),
    ("science", "virl39k", "virl39k_science", "mathverify", 2000),
    ("chart", "chartqapro", "chartqapro", "mathverify", 498),
    ("chart", "chartx", "chartx", "mathverify", 2000),
    ("chart", "tablevqa", "tablevqa", "mathverify", 1500),
    ("chart", "virl39k", "virl39k_chart", "mathverify", 2000),
    ("detection", "v3det", "v3det_train", "detection", 4000),
    ("detection", "object365", "object365_train", "detection", 4000),
    ("grounding", "d3", "d3", "detection", 3000),
    ("counting", "clevr", "clevr", "mathverify", 3000),
    ("ocr", "llavaov", "llava_ov_ocr", "mathverify", 3000),
    ("ocr", "estvqa", "estvqa", "mathverify", 2852),
]
LABELS = ("dog", "cat", "person", "car", "red circle", "blue square", "traffic light", "bottle", "chair", "kite")
DET_RATIO = {"iou_max_label_first": 1.0, "iou_max_iou_first": 0.0, "iou_completeness": 0.3, "map": 0.0,
             "map50": 0.0, "map75": 0.0}


def _png(rng: random.Random) -> bytes:
    from PIL import Image, ImageDraw

    size = (rng.randint(48, 160), rng.randint(48, 160))
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(2):
        x, y = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
        draw.rectangle((x, y, x + size[0] // 3, y + size[1] // 3), fill=tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _math_gold(rng: random.Random, seen: list[str]) -> str:
    if seen and rng.random() < 0.25:
        return rng.choice(seen[-500:])
    kind = rng.random()
    if kind < 0.35:
        answer = str(rng.randint(0, 2000))
    elif kind < 0.50:
        answer = rng.choice("ABCDEFGH")
    elif kind < 0.65:
        answer = f"{rng.uniform(0, 500):.{rng.randint(1, 3)}f}"
    elif kind < 0.80:
        answer = f"\\frac{{{rng.randint(1, 99)}}}{{{rng.randint(2, 99)}}}"
    elif kind < 0.90:
        answer = f"{rng.randint(2, 30)}\\sqrt{{{rng.choice((2, 3, 5, 6, 7, 10))}}}"
    else:
        answer = f"{rng.randint(1, 9)}x^{{{rng.randint(2, 4)}}}+{rng.randint(1, 50)}"
    seen.append(answer)
    return answer


def _det_gold(rng: random.Random) -> str:
    boxes = []
    for _ in range(rng.randint(1, 6)):
        x1, y1 = rng.randint(0, 800), rng.randint(0, 800)
        boxes.append({"bbox_2d": [x1, y1, rng.randint(x1 + 1, 1000), rng.randint(y1 + 1, 1000)],
                      "label": rng.choice(LABELS)})
    return str(boxes)


def _row(rng: random.Random, source: tuple, index: int, seen: list[str]) -> dict:
    task, name, data_source, verifier, _ = source
    n_images = 0 if rng.random() < 0.05 else (2 if rng.random() < 0.05 else 1)
    images = [{"bytes": _png(rng), "path": f"{name}_{index}_{k}.png"} for k in range(n_images)]
    if verifier == "detection":
        answer = _det_gold(rng)
        gold, fmt = f"<answer>\n{answer}\n</answer>", 0.1
        parm = {"det_verifier_normalized": True, "det_reward_ratio": DET_RATIO}
        question = "Locate every object of the listed categories and answer with bbox_2d JSON inside <answer>."
    else:
        answer = _math_gold(rng, seen)
        gold, fmt = f"\\boxed{{{answer}}}", 0.0
        parm = {"det_verifier_normalized": None, "det_reward_ratio": None}
        question = f"Question {index} about {task}: what is the value shown?"
    return {
        "data_source": data_source,
        "images": images,
        "prompt": [{"content": "<image>" * n_images + question, "role": "user"}],
        "ability": task,
        "reward_model": {"answer": answer, "ground_truth": gold, "accuracy_ratio": 1.0, "format_ratio": fmt,
                         "verifier": verifier, "verifier_parm": parm},
        "extra_info": {"id": f"{name}_{index}", "image_path": ""},
    }


def build(out: Path, total: int) -> list[Path]:
    """Write the set under out/train (once): one parquet file per source, rows scaled to `total`."""
    import datasets
    from tqdm.auto import tqdm

    from triune_trl.data.make_sample import ORSTA_FEATURES

    marker = out / f".complete_{total}"
    if marker.exists():
        return sorted((out / "train").glob("*.parquet"))
    shutil.rmtree(out, ignore_errors=True)
    (out / "train").mkdir(parents=True)
    scale = total / sum(source[-1] for source in FILES)
    counts = [max(1, round(source[-1] * scale)) for source in FILES]
    counts[0] += total - sum(counts)
    datasets.disable_progress_bars()
    paths = []
    with tqdm(total=total, desc="building", unit="row") as bar:
        for source, count in zip(FILES, counts, strict=True):
            rng, seen, rows = random.Random(f"bench:{source[1]}:{source[2]}"), [], []
            for index in range(count):
                rows.append(_row(rng, source, index, seen))
                bar.update(1)
            path = out / "train" / f"train_{source[0]}_{source[1]}_{count}.parquet"
            columns = {name: [row[name] for row in rows] for name in ORSTA_FEATURES}
            datasets.Dataset.from_dict(columns, features=ORSTA_FEATURES).to_parquet(str(path))
            paths.append(path)
    marker.touch()
    return paths


# ------------------------------------------------------------------------------------------- measured children


def _child(mode: str, data: Path, cache: Path) -> dict:
    """Runs in a fresh process: one measurement, its wall time and this process's peak RSS."""
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    start = time.perf_counter()
    out: dict = {}
    if mode == "reference":
        import datasets

        parts = [datasets.load_dataset("parquet", data_files=str(p), split="train", cache_dir=str(cache))
                 for p in sorted((data / "train").glob("*.parquet"))]
        out["rows"] = len(datasets.concatenate_datasets(parts))
    elif mode == "validate":
        from triune_trl.data import ImageSizing, ReleaseRescale, load_data_config, validate_files

        config = load_data_config(data / "bench.yaml")
        report = validate_files(config.file_specs("train"), sizing=ImageSizing(), rescale=ReleaseRescale())
        out.update(rows=report.rows, problems=len(report.problems), distinct_specs=report.distinct_specs)
    else:
        from triune_trl.data import ImageSizing, load_data_config, load_split

        dataset = load_split(load_data_config(data / "bench.yaml"), "train", ImageSizing(), cache_dir=cache)
        out["rows"] = len(dataset)
        out["load_seconds"] = round(time.perf_counter() - start, 2)
        batch_start = time.perf_counter()
        batch = dataset.__getitems__(list(range(0, len(dataset), len(dataset) // 64))[:64])
        out["batch_of_64_seconds"] = round(time.perf_counter() - batch_start, 3)
        out["batch_images"] = sum(len(row["images"]) for row in batch)
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return out


def _measure(mode: str, data: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_hf_cache_") as cache:
        env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
        result = subprocess.run([sys.executable, __file__, "--child", mode, "--out", str(data), "--cache", cache],
                                capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "triune_bench_47k"),
                        help="folder for the generated set (reused when complete)")
    parser.add_argument("--rows", type=int, default=47_000)
    parser.add_argument("--child", choices=("reference", "validate", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = Path(args.out)
    if args.child:
        print(json.dumps(_child(args.child, data, Path(args.cache))))
        return

    build_start = time.perf_counter()
    files = build(data, args.rows)
    built = time.perf_counter() - build_start
    (data / "bench.yaml").write_text("root: .\ncot_prompts: true\ntrain:\n  - train/*.parquet\n")
    load_before = os.getloadavg()
    results = {mode: _measure(mode, data) for mode in ("reference", "validate", "load")}
    load, validate, reference = results["load"], results["validate"], results["reference"]
    assert load["rows"] == validate["rows"] == reference["rows"] == args.rows and validate["problems"] == 0
    report = {
        "rows": args.rows,
        "files": len(files),
        "data_bytes": sum(p.stat().st_size for p in files),
        "build_seconds": round(built, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "results": results,
        "load_over_reference": round(load["seconds"] / reference["seconds"], 2),
        "goal": {"seconds": GOAL_SECONDS, "peak_rss_bytes": GOAL_BYTES,
                 "met": load["seconds"] <= GOAL_SECONDS and load["peak_rss_bytes"] <= GOAL_BYTES},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    mib = 1024**2
    print(f"{args.rows} rows in {len(files)} files ({report['data_bytes'] / mib:.0f} MiB), "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} before")
    print(f"{'measurement':<46} {'wall s':>8} {'peak RSS MiB':>13}")
    names = {"reference": "release-style read (load_dataset, no checks)",
             "validate": "triune data validate (all checks, no build)",
             "load": "load_split (all checks + lazy dataset)"}
    for mode, name in names.items():
        print(f"{name:<46} {results[mode]['seconds']:>8.1f} {results[mode]['peak_rss_bytes'] / mib:>13.0f}")
    print(f"load / reference: {report['load_over_reference']}x; distinct reward specs checked: "
          f"{validate['distinct_specs']}; first batch of 64 rows decoded in {load['batch_of_64_seconds']} s")
    print(f"goal (<= {GOAL_SECONDS:.0f} s, <= 2 GiB): {'met' if report['goal']['met'] else 'NOT met'}; "
          f"written to {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
