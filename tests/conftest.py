"""Shared fixtures: one Engine on the bundled model per session, plus chat prompts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def engine():
    """The default Engine (bundled SmolLM2-135M-Instruct, radix cache, lpm)."""
    import sgl

    e = sgl.Engine(log_interval=0)
    yield e
    e.shutdown()


@pytest.fixture(scope="session")
def chat_prompts(engine):
    tok = engine.tokenizer
    questions = ["What is the capital of France?", "Name a primary color.", "What is 2+2?"]
    return [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


@pytest.fixture(scope="session")
def tok():
    """The bundled model's tokenizer alone (for grammar tests that need no engine)."""
    from sgl.models.loader import load_bundled_tokenizer

    return load_bundled_tokenizer()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Simulated decoding runs many tiny ops: one torch thread is faster for them."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
