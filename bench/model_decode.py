"""Decode speed of our model at batch 1 and 8 (a quick manual loop, no scheduler).

Prefills a short chat prompt per request, then runs greedy DECODE steps and
reports tokens/s (generated tokens / wall time of the decode steps only).

    python bench/model_decode.py [--model PATH] [--steps 64] [--batch 1 8] [--threads N] [--no-prepack] [--no-torch-compile]

On a CPU shared with other busy processes, run with OMP_WAIT_POLICY=PASSIVE (or
--threads 1): spinning OpenMP workers otherwise slow every op many-fold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sgl.executor.compiled_decode import CompiledDecode  # noqa: E402
from sgl.models.loader import load_model  # noqa: E402
from tests.model_utils import KVBook  # noqa: E402


def run(lm, model, batch: int, steps: int):
    """Returns (wall tokens/s, CPU-time tokens/s) of ``steps`` decode steps over ``batch`` requests
    (``model``: ``lm.model`` or its CompiledDecode wrapper).

    CPU-time tokens/s divides by this process's CPU seconds; with one thread on a
    shared machine it estimates the speed the step would have on an idle core."""
    cfg = lm.hf_config
    book = KVBook(cfg.num_hidden_layers, cfg.num_key_value_heads, lm.model.model.layers[0].self_attn.head_dim,
                  kv_size=batch * (steps + 128), max_reqs=batch, max_context_len=steps + 128)
    prompts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": f"Count to {i + 3}."}],
                                                add_generation_prompt=True, tokenize=True)
               for i in range(batch)]
    prompts = [list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p) for p in prompts]
    rows = [book.new_request() for _ in prompts]
    with torch.inference_mode():
        h = model(book.extend(rows, prompts))
        last = torch.cumsum(torch.tensor([len(p) for p in prompts]), 0) - 1
        next_ids = model.compute_logits(h[last]).argmax(-1).tolist()
        for _ in range(3):  # warm-up steps (not timed)
            next_ids = model.compute_logits(model(book.decode(rows, next_ids))).argmax(-1).tolist()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            next_ids = model.compute_logits(model(book.decode(rows, next_ids))).argmax(-1).tolist()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return batch * steps / dt, batch * steps / dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="HF dir or .gguf (default: bundled SmolLM2-135M)")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-prepack", action="store_true", help="plain F.linear instead of oneDNN-packed weights")
    ap.add_argument("--no-torch-compile", action="store_true",
                    help="eager single-token steps (no sgl.executor.compiled_decode)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model, cpu_prepack=not args.no_prepack, gguf_block_gemv=not args.no_torch_compile)
    model = lm.model
    if not args.no_torch_compile:
        model = CompiledDecode(lm.model)
        model.compile()
    print(f"load_model: {time.perf_counter() - t0:.2f} s ({lm.model_dir}); threads={torch.get_num_threads()}, "
          f"prepack={not args.no_prepack}, torch_compile={not args.no_torch_compile}")
    for bs in args.batch:
        wall, cpu = run(lm, model, bs, args.steps)
        print(f"batch {bs}: {wall:.1f} tokens/s wall, {cpu:.1f} tokens per CPU-second")


if __name__ == "__main__":
    main()
