"""Supervised warm start before V-Triune RL (TRL's SFTTrainer on gold answers in each verifier's format).

    python recipes/sft_warm_start.py --config recipes/configs/tiny_warm_start.yaml
    triune warm-start --config recipes/configs/tiny_warm_start.yaml [--num_train_epochs 1 --output_dir D ...]

Every option is a field of `WarmStartArguments` (data), `trl.SFTConfig` (optimisation, logging) or
`trl.ModelConfig` (model loading); the YAML sets them and the command line overrides them. The logic lives in
`triune_trl.runs.warm_start` so that it is tested; this file only parses and runs.
"""

import sys

from triune_trl.monitoring.notices import install as quiet_known_notices

quiet_known_notices()  # before the libraries below are imported: they log their notices while importing

from triune_trl.checks import parse_recipe_args  # noqa: E402
from triune_trl.errors import TriuneError  # noqa: E402
from triune_trl.runs.warm_start import make_parser, run  # noqa: E402


def main() -> int:
    try:
        script_args, training_args, model_args = parse_recipe_args(
            make_parser(), sys.argv[1:], "python recipes/sft_warm_start.py"
        )
        run(script_args, training_args, model_args)
    except TriuneError as error:
        print(f"sft_warm_start: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
