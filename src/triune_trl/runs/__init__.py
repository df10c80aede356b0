"""One module per `triune` command's pipeline: `train` (`triune train`, recipes/grpo_triune.py), `evaluate`
(`triune eval`), `warm_start`, `pretrain`, `preflight`, `score_file` (`triune reward score`), and what they share
at the end of a run: `hub` (model card, recipe file, Hub push) and `learning` (the before/after table of
`make learn`). `cli.py` assembles the commands; each module imports its heavy dependencies when it runs.

May import: every package below it, the root's `configs`, `checks`, `errors`, and `data`, `rewards`, `monitoring`,
`server`, `models`, `generation`, `trainer`. Nothing imports `runs` but `cli` and the recipes.
"""
