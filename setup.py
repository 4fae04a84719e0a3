"""Packaging for cald-speech."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="cald-speech",
    version="0.1.0",
    description=(
        "Linear-time students of wav2vec2/HuBERT/WavLM speech encoders, fine-tuned "
        "jointly with cross-architecture layerwise distillation (CALD), on SpeechBrain"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["cald_speech", "cald_speech.*"]),
    include_package_data=True,
    package_data={"cald_speech": ["data/*.txt", "data/*.json"]},
    install_requires=[
        # torch and torchaudio must match; SpeechBrain imports torchaudio.
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "speechbrain==1.1.2",
        # The range the test suite ran on: the student builds on transformers internals
        # (masking_utils, the attention interfaces, the wav2vec2/HuBERT/WavLM modules).
        "transformers>=5.24,<5.25",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        # The one WER/CER engine (cald_speech.data.metrics); tested with jiwer 4.
        "jiwer>=4,<5",
        "hyperpyyaml>=1.2",
        "soundfile>=0.12",
        "numpy>=1.24",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        # Fused Triton kernels on CUDA GPUs: mamba-ssm's Triton SSD path needs only
        # triton, einops and packaging. mamba-ssm itself is installed without compiling
        # and without its dependencies (tilelang, quack-kernels, nvidia-cutlass-dsl:
        # several GB the SSD path never uses), after the build requirements its
        # setup.py imports (the Makefile does both):
        #   pip install "setuptools>=61" wheel packaging ninja
        #   MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE \
        #     pip install --no-build-isolation --no-deps mamba-ssm==2.3.2.post1
        "cuda": ["triton>=3.5", "einops", "packaging"],
        "dev": ["pytest>=8", "ruff>=0.5"],
        # Beam search with an n-gram LM: flashlight-text (the compiled CTC decoder that
        # torchaudio's ctc_decoder runs; wheels), kenlm for SpeechBrain's KenLM scorer
        # (with pygtrie). kenlm is a source distribution: it compiles (a C++ compiler,
        # zlib; ~1 min).
        "lm": ["flashlight-text==0.0.7", "kenlm==0.3.0", "pygtrie>=2.5"],
        # The documentation site (make docs): mkdocs, and mkdocstrings for the API
        # reference from the numpy-style docstrings (griffe reads them without importing).
        "docs": ["mkdocs==1.6.1", "mkdocstrings==1.0.8", "mkdocstrings-python==2.0.11",
                 "mkdocs-autorefs==1.4.5", "griffelib==2.4.1"],
    },
    entry_points={
        "console_scripts": [
            "cald-synth=cald_speech.data.synth.cli:main",
            "cald-prepare=cald_speech.data.prepare:main",
            "cald-convert=cald_speech.student.cli:main",
            "cald-transcribe=cald_speech.inference.cli:main",
            "cald-bench=cald_speech.bench.cli:main",
            "cald-lm=cald_speech.lm.cli:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Multimedia :: Sound/Audio :: Speech",
    ],
)
