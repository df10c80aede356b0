"""Test-only driver: the real recipe's trainer with a non-finite gradient injected at one chosen step.

Launched by tests/test_scale_nonfinite.py under `accelerate launch` (2 CPU processes, DeepSpeed ZeRO-2 / ZeRO-3).
It parses the same arguments as recipes/grpo_triune.py and builds the trainer with `training.build_trainer`;
the only additions are test-side: `NonFiniteInjection` (a TrainerCallback plus a forward hook on the language
model's final norm that multiplies its output by NaN during the gradient-carrying forwards of step
TRIUNE_TEST_NAN_STEP, 1-based; TRL scores with a fused LM head, which never calls `lm_head` itself) and a
fingerprint of each rank's own parameter storage after every optimizer step, written with the skip counter to
$TRIUNE_TEST_REPORT_DIR/rank<N>.json. Users never see any of this: no option, no flag, nothing in the package.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from triune_trl.runs.train import build_trainer, make_parser


def local_fingerprint(model: torch.nn.Module) -> str:
    """Hash of the parameter values this rank holds (its ZeRO-3 partition, or the whole tensor otherwise)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        tensor = getattr(parameter, "ds_tensor", None)
        tensor = parameter.data if tensor is None else tensor.data
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class NonFiniteInjection(TrainerCallback):
    """NaN hidden states (so NaN log-probs and gradients) in the training forwards of one step; weight prints."""

    def __init__(self, trainer, step: int):
        self.trainer, self.step, self.active = trainer, step, False
        self.fingerprints = {0: local_fingerprint(trainer.model)}
        trainer.model.get_decoder().norm.register_forward_hook(self._poison)

    def _poison(self, module, inputs, output):
        if self.active and torch.is_grad_enabled():
            return output * float("nan")
        return output

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.step

    def on_step_end(self, args, state, control, **kwargs):
        self.active = False
        self.fingerprints[state.global_step] = local_fingerprint(self.trainer.model)


def main() -> None:
    script_args, training_args, model_args = make_parser().parse_args_and_config()
    trainer = build_trainer(script_args, training_args, model_args)
    injection = NonFiniteInjection(trainer, int(os.environ["TRIUNE_TEST_NAN_STEP"]))
    trainer.add_callback(injection)
    trainer.train()
    report = {
        "fingerprints": injection.fingerprints,
        "skipped": trainer._skipped_updates,
        "log_history": trainer.state.log_history,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
        "model_dtype": str(next(trainer.model_wrapped.parameters()).dtype),
    }
    out = Path(os.environ["TRIUNE_TEST_REPORT_DIR"]) / f"rank{trainer.accelerator.process_index}.json"
    out.write_text(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
