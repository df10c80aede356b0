"""docs/rewards.md documents every parameter of every built-in verifier, under that verifier's own heading."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO_ROOT
from triune_trl.rewards import get_verifier
from triune_trl.rewards.textual import ParamVerifier

DOC = (REPO_ROOT / "docs" / "rewards.md").read_text(encoding="utf-8")
DOCUMENTED = ("ocr", "counting", "numeric", "choice", "grounding", "text_overlap", "length", "format")


def section(name: str) -> str:
    match = re.search(rf"^### `{name}`.*?(?=^### |^## |\Z)", DOC, re.MULTILINE | re.DOTALL)
    assert match, f"docs/rewards.md has no '### `{name}`' section"
    return match.group(0)


@pytest.mark.parametrize("name", DOCUMENTED)
def test_every_parameter_is_in_its_verifier_table(name):
    verifier = get_verifier(name)
    assert isinstance(verifier, ParamVerifier)
    documented = set(re.findall(r"^\| `(\w+)` \|", section(name), re.MULTILINE))
    declared = {param.name for param in verifier.PARAMS}
    if name == "grounding":
        declared.add("det_verifier_normalized")  # the typed Orsta field it reads
    assert documented == declared


def test_every_verifier_is_in_the_overview_table():
    from triune_trl.rewards import available_verifiers

    builtin = [name for name in available_verifiers() if not name.startswith("test_")]
    for name in builtin:
        assert re.search(rf"^\| `{name}` \|", DOC, re.MULTILINE), name
