"""TRL's real train data path at the orsta_7b batch geometry, on one process: images decoded per optimizer step, peak
RSS, and the size of a generation round's buffered image tensors.

    python benchmarks/data_path.py [--gradient-accumulation-steps 128] [--steps 2] [--label after]

1. Writes an Orsta-shaped parquet (one image per row, as most Orsta rows; JPEG photos at realistic sizes, from
   640x480 to 2048x1536, which the release rescale keeps at an area in [512², 2048²]) and builds the tiny model.
2. Builds `TriuneGRPOTrainer` with orsta_7b's per-rank geometry: per_device_train_batch_size 8, num_generations 8,
   gradient_accumulation_steps = steps_per_generation (128 on 8 GPUs; 64 on 16; 16 on 64), so one generation round
   per optimizer step of 8 × GA completions per rank (GA prompts). World size does not change a rank's geometry.
3. Walks the trainer's own train DataLoader exactly as transformers 5's loop does (`get_batch_samples` fetches the
   GA micro-batches of a step before the first), and on each round's first micro-step hands the rows to what the
   trainer generates from (`trainer.generation_rows`, where it exists). No generation: the model never runs.
   Counts the images the loader's decode function decodes (the real function, counted as it is called) and the
   peak RSS growth over the walk (resident memory sampled every 5 ms).
4. Computes the buffered image tensors of one round per rank from the Qwen2.5-VL-7B image processor's settings
   (patch 14, merge 2, temporal patch 2, max 12,845,056 pixels; bf16 under DeepSpeed) and checks the arithmetic on
   a real processor run for each image size.

Run it at the commit before the fix with the same file (`PYTHONPATH=<old checkout>/src`) for the "before" row; the
JSON results are appended to benchmarks/results/latest/data_path.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest" / "data_path.json"  # git-ignored (README)
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (2048, 1536)]  # (width, height)
# Qwen2.5-VL-7B-Instruct's preprocessor_config.json
QWEN25VL = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 12845056}


def photo(width: int, height: int, seed: int) -> bytes:
    """A JPEG with photo-like content (smooth gradients and noise), so decoding costs what a real photo costs."""
    import numpy as np
    import PIL.Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 127 // (width + height))], axis=-1)
    noise = rng.integers(0, 40, size=(height, width, 3))
    buffer = io.BytesIO()
    PIL.Image.fromarray((base + noise).clip(0, 255).astype("uint8")).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment after its start marker: distinct bytes, the same pixels and decode cost
    (every row of real data has its own image; identical bytes would be decoded once per call)."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def write_data(folder: Path, rows: int) -> Path:
    import datasets

    from triune_trl.data.make_sample import ORSTA_FEATURES

    images = [photo(w, h, seed) for seed, (w, h) in enumerate(SIZES)]
    rng = random.Random(0)
    records = []
    for i in range(rows):
        records.append({
            "data_source": "chartqa_pro", "ability": "chart",
            "images": [{"bytes": with_comment(rng.choice(images), f"row {i}"), "path": None}],
            "prompt": [{"role": "user", "content": f"<image>What is the value of bar {i}? Answer with a number."}],
            "reward_model": {"answer": "4", "ground_truth": "\\boxed{4}", "accuracy_ratio": 1.0, "format_ratio": 0.0,
                             "verifier": "mathverify",
                             "verifier_parm": {"det_verifier_normalized": None, "det_reward_ratio": None}},
            "extra_info": {"id": str(i), "image_path": ""},
        })
    path = folder / "train" / "train_chart_bench.parquet"
    path.parent.mkdir(parents=True)
    columns = {name: [record.get(name) for record in records] for name in ORSTA_FEATURES}
    datasets.Dataset.from_dict(columns, features=ORSTA_FEATURES).to_parquet(str(path))
    return path


def buffered_image_bytes(sizes: list[tuple[int, int]], completions_per_prompt: int) -> dict[str, float]:
    """Bytes of one round's `pixel_values` per rank: every completion carries its prompt's patches (bf16 / fp32)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    from triune_trl.data.images import ReleaseRescale

    factor = QWEN25VL["patch_size"] * QWEN25VL["merge_size"]
    values_per_patch = 3 * QWEN25VL["temporal_patch_size"] * QWEN25VL["patch_size"] ** 2
    patches = 0
    for width, height in sizes:
        width, height = ReleaseRescale().target_size(width, height)
        h, w = smart_resize(height, width, factor, QWEN25VL["min_pixels"], QWEN25VL["max_pixels"])
        patches += (h // QWEN25VL["patch_size"]) * (w // QWEN25VL["patch_size"])
    values = patches * values_per_patch * completions_per_prompt
    return {"bf16_bytes": values * 2, "fp32_bytes": values * 4, "patches_per_prompt_mean": patches / len(sizes)}


def check_patch_arithmetic() -> None:
    """The formula above against a real Qwen2-VL image processor run with the 7B settings, per benchmark size."""
    import PIL.Image
    from transformers import Qwen2VLImageProcessor

    from triune_trl.data.images import ReleaseRescale

    processor = Qwen2VLImageProcessor(
        patch_size=QWEN25VL["patch_size"], merge_size=QWEN25VL["merge_size"],
        temporal_patch_size=QWEN25VL["temporal_patch_size"],
        size={"shortest_edge": QWEN25VL["min_pixels"], "longest_edge": QWEN25VL["max_pixels"]},
    )
    for width, height in [*SIZES, (512, 512), (2048, 2048)]:
        image = PIL.Image.new("RGB", ReleaseRescale().target_size(width, height))
        values = processor(images=[image], return_tensors="pt")["pixel_values"].numel()
        expected = buffered_image_bytes([(width, height)], 1)["fp32_bytes"] // 4
        assert values == expected, f"{width}x{height}: processor {values} values, arithmetic {expected}"


class RssSampler:
    """Peak resident memory of this process while the walk runs (sampled every 5 ms), and where it started."""

    def __init__(self):
        import psutil

        self.process, self.running = psutil.Process(), True
        self.start = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def stop(self) -> tuple[int, int]:
        self.running = False
        self.thread.join()
        return self.start, max(self.peak, self.process.memory_info().rss)


def walk(args: argparse.Namespace, folder: Path) -> dict:
    import datasets
    from transformers import AutoProcessor

    import triune_trl.data.loader as loader
    from triune_trl.configs import TriuneGRPOConfig
    from triune_trl.data import FileSpec, ImageSizing, load_files
    from triune_trl.models.tiny import build_tiny_model
    from triune_trl.trainer import TriuneGRPOTrainer

    datasets.disable_progress_bars()
    ga = args.gradient_accumulation_steps
    rows = ga * (args.steps + 1)  # prompts per round = GA (8 completions per prompt, 8 per micro-batch)
    data = write_data(folder, rows)
    model_dir = build_tiny_model(folder / "tiny")
    processor = AutoProcessor.from_pretrained(model_dir)
    dataset = load_files([FileSpec(data)], sizing=ImageSizing.from_processor(processor), cache_dir=folder / "cache")
    count = [0]
    real_load_image = loader.load_image

    def counting_load_image(*a, **k):
        count[0] += 1
        return real_load_image(*a, **k)

    loader.load_image = counting_load_image
    config = TriuneGRPOConfig(
        output_dir=str(folder / "out"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        disable_tqdm=True, seed=0, per_device_train_batch_size=8, num_generations=8, gradient_accumulation_steps=ga,
        max_completion_length=8,
    )
    trainer = TriuneGRPOTrainer(
        model=str(model_dir), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=config,
        train_dataset=dataset, processing_class=processor,
    )
    generation_rows = getattr(trainer, "generation_rows", lambda batch: batch)
    epoch_iterator = iter(trainer.get_train_dataloader())
    sampler = RssSampler()
    per_step, seconds = [], []
    for _ in range(args.steps):
        start, before = time.perf_counter(), count[0]
        batch_samples, _ = trainer.get_batch_samples(epoch_iterator, ga, trainer.args.device)
        for i, batch in enumerate(batch_samples):
            if i % config.steps_per_generation == 0:  # TRL generates from this micro-step's batch
                rows_seen = generation_rows(batch)
                assert all(hasattr(image, "size") for row in rows_seen for image in row["images"])
        per_step.append(count[0] - before)
        seconds.append(time.perf_counter() - start)
        del batch_samples
    rss_start, rss_peak = sampler.stop()
    return {
        "gradient_accumulation_steps": ga, "steps_per_generation": config.steps_per_generation,
        "completions_per_round_per_rank": 8 * ga, "images_per_round": ga,
        "images_decoded_per_step": per_step, "seconds_per_step": [round(s, 2) for s in seconds],
        "rss_at_start_mib": round(rss_start / 2**20, 1), "peak_rss_mib": round(rss_peak / 2**20, 1),
        "peak_rss_growth_mib": round((rss_peak - rss_start) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gradient-accumulation-steps", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--label", default="after")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import triune_trl

    with tempfile.TemporaryDirectory() as tmp:
        result = walk(args, Path(tmp))
    check_patch_arithmetic()
    rng = random.Random(0)
    mix = [rng.choice(SIZES) for _ in range(args.gradient_accumulation_steps)]
    buffered = {
        "benchmark_mix": buffered_image_bytes(mix, 8),
        "floor_512": buffered_image_bytes([(512, 512)] * args.gradient_accumulation_steps, 8),
        "ceiling_2048": buffered_image_bytes([(2048, 2048)] * args.gradient_accumulation_steps, 8),
    }
    result.update(label=args.label, code=str(Path(triune_trl.__file__).parent), buffered_image_tensors=buffered,
                  machine=f"{platform.machine()}, {os.cpu_count()} CPUs", python=sys.version.split()[0])
    print(json.dumps(result, indent=2))
    if not args.no_save:
        previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps([*previous, result], indent=2) + "\n")


if __name__ == "__main__":
    main()
