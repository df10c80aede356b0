"""V-Triune GRPO training: one RL run over visual reasoning and perception tasks.

    python recipes/grpo_triune.py --config recipes/configs/tiny_cpu.yaml
    accelerate launch recipes/grpo_triune.py --config recipes/configs/<recipe>.yaml --output_dir runs/x

Every option is a field of `TriuneScriptArguments` (data and rewards), `trl.GRPOConfig` (optimisation, generation,
logging) or `trl.ModelConfig` (model loading, LoRA); the YAML sets them and the command line overrides them.
The logic lives in `triune_trl.runs.train` so that it is tested; this file only parses and runs.
"""

import sys

from triune_trl.monitoring.notices import install as quiet_known_notices

quiet_known_notices()  # before the libraries below are imported: they log their notices while importing

from triune_trl.errors import TriuneError  # noqa: E402
from triune_trl.runs.train import parse_args, run  # noqa: E402


def main() -> int:
    try:
        script_args, training_args, model_args = parse_args(command="python recipes/grpo_triune.py")
        run(script_args, training_args, model_args)
    except TriuneError as error:
        print(f"grpo_triune: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
