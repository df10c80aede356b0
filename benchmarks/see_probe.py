"""Where/what probes of the `see` tiny Qwen2.5-VL (issue 19): can the model learn to say which cell holds an object,
or its colour, from one shape drawn in one cell of make-sample's 4 x 4 grid?

A plain training loop (no TRL) on a fresh random-init model built from the `see` preset with config overrides,
16 fresh rows per step, answer-only loss, AdamW; every `--eval-every` steps the teacher-forced exact match of the
whole answer on 128 held-out rows. `--facts` instead prints what the vision path does with position: which merged
token changes when the object is in cell k, and whether the object's token differs between cells.

    python benchmarks/see_probe.py --task cell --theta 4 --mrope 2,7,7 --lr 5e-4 --vision-lr 5e-5 --steps 800

Results: benchmarks/results/see_pretrain.md (session of 2026-12-06).
"""

from __future__ import annotations

import argparse
import json
import random
import time

QUESTIONS = {"cell": "Which cell holds the object?", "colour": "What colour is the object?"}


def main() -> None:
    import torch
    import transformers
    from PIL import Image

    from triune_trl.data import make_sample as ms
    from triune_trl.models import tiny

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(QUESTIONS), default="cell")
    parser.add_argument("--theta", type=float, default=None, help="text rope_theta (default: the preset's)")
    parser.add_argument("--mrope", default="", help="mRoPE section t,h,w (default: the preset's)")
    parser.add_argument("--positions", choices=("3d", "1d"), default="3d",
                        help="3d: pass mm_token_type_ids (mRoPE as GRPO/eval/vLLM); 1d: omit them (plain positions)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vision-lr", type=float, default=None, help="vision tower's rate (default: --lr)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--facts", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = tiny.SEE_SPEC
    processor = tiny.build_processor(spec)
    tokenizer = processor.tokenizer
    config = tiny.build_config(tokenizer, spec)
    rope = dict(config.text_config.rope_parameters)
    if args.theta is not None:
        rope["rope_theta"] = args.theta
    if args.mrope:
        rope["mrope_section"] = [int(x) for x in args.mrope.split(",")]
    config.text_config.rope_parameters = rope
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    print("text rope", rope, flush=True)
    cell_px = ms._CELL

    def draw(rng: random.Random, cell: int | None = None, colour: str | None = None, background=None):
        image = Image.new("RGB", (ms.CANVAS, ms.CANVAS), background or rng.choice(ms._BACKGROUNDS))
        cell = rng.randrange(16) if cell is None else cell
        colour = colour or rng.choice(list(ms.SHAPE_COLOURS))
        left, top = (cell % 4) * cell_px + ms._CELL_MARGIN, (cell // 4) * cell_px + ms._CELL_MARGIN
        side = cell_px - 2 * ms._CELL_MARGIN
        ms._draw_object(image, colour, rng.choice(ms.SHAPES), (left, top, left + side, top + side))
        return image, cell, colour

    if args.facts:
        model.eval()
        white = (255, 255, 255)

        def merged(image):
            pixels = processor.image_processor(images=[image], return_tensors="pt")
            with torch.no_grad():
                return model.model.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output

        blank = merged(Image.new("RGB", (ms.CANVAS, ms.CANVAS), white))
        objects = []
        for cell in range(16):
            out = merged(draw(random.Random(0), cell, "red", white)[0])
            change = (out - blank).norm(dim=-1)
            objects.append(out[int(change.argmax())])
            print(f"object in cell {cell}: most changed merged token {int(change.argmax())} (change "
                  f"{change.max():.3f}, next {change.sort().values[-2]:.4f})")
        stacked = torch.stack(objects)
        print(f"blank tokens: all equal to {float((blank - blank[0]).abs().max()):.1e}; object token across cells: "
              f"largest difference {float((stacked - stacked[0]).norm(dim=-1).max()):.1e} (norm "
              f"{float(stacked[0].norm()):.2f})")
        return

    def encode(rows):
        prompts, images, answers = [], [], []
        for image, cell, colour in rows:
            content = [{"type": "image"}, {"type": "text", "text": QUESTIONS[args.task]}]
            messages = [{"role": "user", "content": content}]
            prompts.append(processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            images.append(image)
            answers.append((f"c{cell + 1}" if args.task == "cell" else colour) + "<|im_end|>\n")
        encoded = processor(text=prompts, images=images, return_tensors="pt", padding=True, padding_side="right")
        pieces = [(int(encoded["attention_mask"][i].sum()), tokenizer(a, add_special_tokens=False)["input_ids"])
                  for i, a in enumerate(answers)]
        length = max(n + len(a) for n, a in pieces)
        ids = torch.full((len(rows), length), tokenizer.pad_token_id)
        labels = torch.full((len(rows), length), -100)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (n, answer) in enumerate(pieces):
            ids[i, :n] = encoded["input_ids"][i, :n]
            ids[i, n:n + len(answer)] = torch.tensor(answer)
            labels[i, n:n + len(answer)] = torch.tensor(answer)
            mask[i, :n + len(answer)] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "pixel_values": encoded["pixel_values"], "image_grid_thw": encoded["image_grid_thw"]}
        if args.positions == "3d":
            batch["mm_token_type_ids"] = (ids == model.config.image_token_id).long()
        return batch

    visual = [p for n, p in model.named_parameters() if "visual" in n]
    rest = [p for n, p in model.named_parameters() if "visual" not in n]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": args.lr},
                                   {"params": visual, "lr": args.vision_lr or args.lr}], weight_decay=0.01)
    test_rng = random.Random(12345)
    test = [encode([draw(test_rng) for _ in range(32)]) for _ in range(4)]

    def exact_match() -> float:
        model.eval()
        hits = 0.0
        for batch in test:
            with torch.no_grad():
                logits = model(**batch).logits
            predicted, gold = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
            hits += ((predicted == gold) | (gold == -100)).all(-1).float().sum().item()
        model.train()
        return 100 * hits / sum(len(b["input_ids"]) for b in test)

    rng, start, history = random.Random(0), time.time(), []
    model.train()
    for step in range(1, args.steps + 1):
        batch = encode([draw(rng) for _ in range(16)])
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                norm = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
            history.append((step, round(exact_match(), 1)))
            print(f"step {step}: loss {loss.item():.3f}, held-out exact match {history[-1][1]}%, merged token norm "
                  f"{float(norm.norm(dim=-1).mean()):.1f} ({time.time() - start:.0f} s)", flush=True)
    print("RESULT", json.dumps({**vars(args), "history": history}))


if __name__ == "__main__":
    main()
