"""Run a prompt file through the engine and print each completion plus a summary.

``python -m sgl.launch +experiment=generate [experiment.prompts_file=...] [cache=none] ...``
"""

from __future__ import annotations

import time
from pathlib import Path

from sgl.core.config import EngineConfig
from sgl.engine.engine import Engine


def main(cfg: EngineConfig) -> None:
    exp = cfg.experiment
    path = Path(exp["prompts_file"])
    if not path.is_absolute():
        path = Path(__file__).resolve().parent.parent / path
    questions = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    engine = Engine(config=cfg)
    try:
        tok = engine.tokenizer
        if exp.get("use_chat_template", True) and tok.chat_template:
            prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                               add_generation_prompt=True) for q in questions]
        else:
            prompts = questions
        params = {"max_new_tokens": int(exp.get("max_new_tokens", 48)),
                  "temperature": float(exp.get("temperature", 0.0))}
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        wall = time.perf_counter() - t0
        for q, o in zip(questions, outs):
            print(f"### {q}\n{o['text'].strip()}\n")
        info = engine.get_server_info()["stats"]
        gen = sum(o["meta_info"]["completion_tokens"] for o in outs)
        prompt = sum(o["meta_info"]["prompt_tokens"] for o in outs)
        cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
        print("=" * 60)
        print(f"requests: {len(outs)}  prompt tokens: {prompt}  cached tokens: {cached}  "
              f"generated tokens: {gen}")
        print(f"wall time: {wall:.2f} s  throughput: {gen / wall:.1f} generated tokens/s  "
              f"cache hit rate: {100 * info['cache_hit_rate']:.1f}%")
    finally:
        engine.shutdown()
