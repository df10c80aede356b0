"""Known third-party notices that every run prints on a host without a GPU, kept off the console.

Why: a tiny CPU run printed, before its first step, three torch deprecation notices from inside torch itself,
vLLM's "Triton is installed, but `triton.backends` could not be imported", torch's "No CUDA runtime is found",
DeepSpeed's "Setting accelerator to CPU" and, for Qwen2.5-VL, transformers' 280-character "new PAD/BOS/EOS tokens":
nothing a user can act on, and the one line that matters (a bad row, a missing file) scrolls away among them. Each
filter is scoped to one logger and one message, so every other record of those loggers, every error and every other
library's output still reaches the console. `install()` runs before the libraries are imported (the `triune`
command and the recipe scripts call it first), since most of these notices are logged while their module imports.
"""

from __future__ import annotations

import logging

__all__ = ["CPU_ONLY_NOTICES", "KNOWN_NOTICES", "install"]

_NO_FRAME_CAP = "video processing does not apply the per-frame pixel cap"
# logger name -> text in the messages of that logger that are dropped
KNOWN_NOTICES: dict[str, tuple[str, ...]] = {
    "torch._opaque_base": ("torch._opaque_base is deprecated",),
    "torch._library.opaque_object": ("register_opaque_type is deprecated", "typ='value' is deprecated"),
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),
    "vllm.triton_utils.importing": ("Triton is installed, but `triton.backends` could not be imported",),
    "DeepSpeed": ("Setting accelerator to CPU.",),
    # transformers 5.17's Qwen2_5_VLConfig keeps the special-token ids in its text config only, so Trainer re-aligns
    # the top-level ones from the tokenizer on every Qwen2.5-VL run, released checkpoints included, and says so in a
    # 280-character line. The tiny builder writes ids that agree (tests/test_tiny.py); the loaded config drops them.
    "transformers.trainer_utils": ("The tokenizer has new PAD/BOS/EOS tokens that differ from the model config",),
    # vLLM's multimodal profiling builds the video processor of every Qwen-VL model; nothing here trains on video
    "transformers.models.qwen2_vl.video_processing_qwen2_vl": (_NO_FRAME_CAP,),
    "transformers.models.qwen3_vl.video_processing_qwen3_vl": (_NO_FRAME_CAP,),
}
# Dropped only on hosts without CUDA: there the fast kernels named cannot be installed, on GPUs the advice stands.
CPU_ONLY_NOTICES: dict[str, tuple[str, ...]] = {
    "transformers.integrations.hub_kernels": ("is falling back to its reference PyTorch implementation",),
}


class _DropKnownNotices(logging.Filter):
    """Drops a logger's records below ERROR whose message holds one of its known notices."""

    def __init__(self, notices: tuple[str, ...], cpu_only: bool = False):
        super().__init__()
        self.notices, self.cpu_only = notices, cpu_only

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or not any(notice in str(record.msg) for notice in self.notices):
            return True
        return self.cpu_only and _has_cuda()


def _has_cuda() -> bool:
    import torch  # the record comes from a library that imported torch already

    return torch.cuda.is_available()


def install() -> None:
    """Filter the known notices from now on (idempotent: a logger gets one filter however often this runs)."""
    for table, cpu_only in ((KNOWN_NOTICES, False), (CPU_ONLY_NOTICES, True)):
        for name, notices in table.items():
            logger = logging.getLogger(name)
            if not any(isinstance(existing, _DropKnownNotices) for existing in logger.filters):
                logger.addFilter(_DropKnownNotices(notices, cpu_only))
