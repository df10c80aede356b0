"""Source-level metric monitoring: V-Triune's per-`data_source` view of a run (docs/monitoring.md).

`per_source` (records -> `<metric>/<data_source>` metrics), `reflection` (the release's reflection words and
ratios), `collector` (records of a scored batch, kept per logging window; `TriuneGRPOTrainer` feeds it),
`eval_table` (the tables of `triune eval`, which `runs/evaluate.py` runs), `plots` (`triune plot`), `run_files` (a run
folder's checkpoints).

May import: `errors` and `rewards` (reward specs, the IoU schedule). It only computes metrics from what the trainer
hands it: nothing here imports `data` or `trainer` (tests/test_layout.py).
"""
