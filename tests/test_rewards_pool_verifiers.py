"""Verifiers that misbehave on purpose, for the worker-pool tests (no tests here).

They live in their own small module because the pool's workers import the module of every registered verifier:
this one imports nothing heavy, so starting or replacing a worker stays fast. A completion containing `hang` sleeps
far past any time limit, `spin` busy-loops with SIGALRM ignored (what a C extension stuck in a loop looks like to
Python), `exit` makes the worker process exit, `segfault` kills it with SIGSEGV; a gold `hang` hangs gold parsing.
Anything else scores accuracy 1.0 with the worker's pid as a sub-score.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from triune_trl.rewards.registry import Scored, ScoringContext, Verifier, register_verifier
from triune_trl.rewards.spec import RewardSpec


def misbehave(text: str) -> None:
    if "hang" in text:
        time.sleep(3600)
    if "spin" in text:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    if "exit" in text:
        os._exit(3)
    if "segfault" in text:
        os.kill(os.getpid(), signal.SIGSEGV)


@register_verifier("test_misbehave")
class MisbehavingVerifier(Verifier):
    def format_reward(self, completion: str, spec: RewardSpec) -> float:
        return 0.0

    def parse_gold(self, spec: RewardSpec) -> str:
        misbehave(spec.ground_truth)
        return spec.ground_truth

    def accuracy(self, completion: str, spec: RewardSpec, gold: Any, ctx: ScoringContext) -> Scored:
        misbehave(completion)
        return 1.0, {"pid": float(os.getpid())}
