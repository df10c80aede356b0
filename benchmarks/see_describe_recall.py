"""Dense-description recall of a `see` checkpoint (issue 19): does it say where each object is, and what it is?

Greedy "List every object in the image with its cell." on held-out describe scenes (triune_trl.runs.pretrain's describe
rows from their own seed), scored per item: cells (where), labels as a multiset in any cell (what), and
(cell, label) pairs.

    python benchmarks/see_describe_recall.py artifacts/see_bridge [--scenes 48]

Results: benchmarks/results/see_pretrain.md (session of 2026-12-06).
"""

from __future__ import annotations

import argparse
import random
from collections import Counter


def main() -> None:
    import torch
    import transformers

    from triune_trl.runs import pretrain

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = transformers.AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(args.model)
    rng = random.Random(args.seed)
    pairs = cells = labels = gold_total = cells_said = 0
    for _ in range(args.scenes):
        messages, gold, images = pretrain.describe_row(rng)
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = processor(text=[prompt], images=images, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=64, do_sample=False)
        text = processor.tokenizer.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        want = {item.strip() for item in gold.split(",")}
        said = {item.strip() for item in text.split(",") if item.strip()}
        pairs += len(want & said)
        gold_total += len(want)
        want_cells, said_cells = {w.split(" ")[0] for w in want}, {s.split(" ")[0] for s in said}
        cells += len(want_cells & said_cells)
        cells_said += len(said_cells)
        labels += sum((Counter(" ".join(w.split(" ")[1:]) for w in want)
                       & Counter(" ".join(s.split(" ")[1:]) for s in said)).values())
    print(f"{args.model}: cells recall {100 * cells / gold_total:.1f}% "
          f"precision {100 * cells / max(cells_said, 1):.1f}%; labels recall {100 * labels / gold_total:.1f}%; "
          f"(cell, label) recall {100 * pairs / gold_total:.1f}% "
          f"({gold_total} objects in {args.scenes} scenes)")


if __name__ == "__main__":
    main()
