"""triune-trl: V-Triune (Visual Triple Unified RL) on TRL's GRPOTrainer.

The packages, bottom to top (a package imports only those below it; docs/architecture.md): `data`, `rewards`,
`monitoring`, `server` (the reward server); the root's `errors`, `checks`, `configs`; `models`, `generation`
(vLLM); `trainer`; `runs` (one pipeline per `triune` command); `cli`.

Modules that stood at the root before the packages above existed keep their old import path (`triune_trl.tiny`,
`triune_trl.training`, ...) through `_MOVED`, with a DeprecationWarning naming the new one, so scripts written
against 0.1 layouts keep running.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

_MOVED = {
    "callbacks": "trainer.callbacks",
    "distributed": "trainer.distributed",
    "image_buffers": "trainer.image_buffers",
    "image_less_forwards": "trainer.image_less_forwards",
    "nonfinite": "trainer.nonfinite",
    "vllm_cpu_sync": "generation.cpu_sync",
    "vllm_http_weights": "generation.http_weights",
    "vllm_prompts": "generation.prompts",
    "vllm_serve": "generation.serve",
    "vllm_server_client": "generation.client",
    "expert_layout": "models.expert_layout",
    "lora": "models.lora",
    "prefill": "models.prefill",
    "tiny": "models.tiny",
    "evaluation": "runs.evaluate",
    "hub": "runs.hub",
    "learning": "runs.learning",
    "preflight": "runs.preflight",
    "pretrain": "runs.pretrain",
    "score_file": "runs.score_file",
    "training": "runs.train",
    "warm_start": "runs.warm_start",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves `triune_trl.<old name>` to the module at its new place (the same module object, so patches and
    isinstance checks agree)."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new_name = f"{__name__}.{_MOVED[spec.name.rpartition('.')[2]]}"
        warnings.warn(f"{spec.name} moved to {new_name}", DeprecationWarning, stacklevel=3)
        module = importlib.import_module(new_name)
        self._spec_at_new_place = module.__spec__
        return module

    def exec_module(self, module):
        """The module already ran at its new place: only undo the import system's relabelling of its spec."""
        module.__spec__ = self._spec_at_new_place


sys.meta_path.append(_MovedModuleFinder())
