"""Engine: the in-process API (``sgl.Engine``), SGLang's offline engine.

Tokenizes and validates requests in the caller's thread, hands them to the
Scheduler thread, and returns ``{"text", "meta_info"}`` results (blocking,
streaming, or asyncio). Many concurrent callers share one scheduler loop and
their requests batch together.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import weakref
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Union

import torch

from sgl.core.config import EngineConfig, compose_config, kwargs_to_overrides
from sgl.core.version import __version__
from sgl.engine.io import OutputSink
from sgl.engine.req import Req
from sgl.engine.request_builder import GenerateRequest, ModelInfo, RequestBuilder

logger = logging.getLogger("sgl")

Prompt = Union[str, List[str], None]


class Engine:
    """In-process serving engine.

    Args:
        config: a composed EngineConfig (as ``python -m sgl.launch`` builds it);
            None composes the default config (the bundled SmolLM2-135M-Instruct).
        **kwargs: config overrides, e.g. ``cache="none"``, ``max_total_tokens=4096``,
            ``model_path="/path/to/hf_dir"``, ``"scheduler.policy"="fcfs"``.

    Raises:
        ValueError: unknown option or invalid config value; a missing/corrupt model path.
    """

    def __init__(self, config: Optional[EngineConfig] = None, **kwargs):
        if config is not None and kwargs:
            raise ValueError("pass either a composed config or keyword overrides, not both")
        if config is None:
            config = compose_config(kwargs_to_overrides(kwargs))
        self.config: EngineConfig = config
        if not isinstance(getattr(torch, config.model.dtype, None), torch.dtype):
            raise ValueError(f"model.dtype {config.model.dtype!r} is not a torch dtype")
        self._rids: set = set()
        self._rids_lock = threading.Lock()
        # The model is loaded on the scheduler thread, which then runs every step: all torch work stays on
        # one thread, so one OpenMP team serves it (a second team, e.g. from loading on the caller's
        # thread, makes libgomp throttle its spin-waits; measured ~25% slower decode at batch 1 on CPU).
        ready = threading.Event()
        failure: List[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="sgl-scheduler",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        atexit.register(_shutdown_weak, weakref.ref(self))

    def _run(self, ready: threading.Event, failure: List[BaseException]) -> None:
        try:
            self._build()
        except BaseException as e:  # re-raised in the constructor's thread
            failure.append(e)
            return
        finally:
            ready.set()
        self.scheduler.run_forever()

    def _build(self) -> None:
        """Load the model and create pools, cache and scheduler (on the scheduler thread)."""
        from sgl.engine.cache import make_cache_manager
        from sgl.engine.jump_forward import JumpForward
        from sgl.engine.output_processor import OutputProcessor
        from sgl.executor.model_runner import ModelRunner, profile_max_total_tokens
        from sgl.engine.sampling.sampler import SAMPLERS
        from sgl.engine.scheduler import Scheduler
        from sgl.layers.attention import make_attention_backend
        from sgl.models.loader import load_model

        config = self.config
        mc, sc = config.model, config.scheduler
        dtype = getattr(torch, mc.dtype)
        if config.sampler.seed is not None:
            torch.manual_seed(config.sampler.seed)
        try:  # before the model loads, so a wrong name fails at once
            sampler = SAMPLERS.get(config.sampler.name)()
        except ValueError as e:
            raise ValueError(f"sampler.name: {e}") from None
        self.attn_backend = make_attention_backend(config.attention.backend, **config.attention.backend_kwargs())
        loaded = load_model(mc.path, dtype=dtype, device=mc.device, attn_backend=self.attn_backend,
                            gguf_block_gemv=mc.enable_torch_compile and mc.gguf_block_gemv)
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.hf_config = loaded.hf_config
        self.model_path = loaded.model_path
        self.vocab_size = loaded.vocab_size
        self.context_len = int(mc.context_length or loaded.context_len)
        self.eos_token_ids = tuple(loaded.eos_token_ids)
        max_total = sc.max_total_tokens or profile_max_total_tokens(
            self.hf_config, dtype, sc.mem_fraction_static, sc.max_running_requests * self.context_len)
        self.runner = ModelRunner(loaded.model, self.hf_config, max_total, sc.max_running_requests,
                                  self.context_len, dtype, mc.device, torch_compile=mc.enable_torch_compile)
        cache_kw = {} if config.cache.page_size is None else {"page_size": config.cache.page_size}
        self.cache = make_cache_manager(config.cache.name, self.runner.token_to_kv_pool, **cache_kw)
        self.jump_forward = JumpForward(self.tokenizer, config.grammar.jump_forward)
        info = ModelInfo(self.model_path, self.vocab_size, self.context_len, self.runner.token_to_kv_pool.size,
                         self.eos_token_ids, config.grammar.backend)
        self.builder = RequestBuilder(info, self.tokenizer, self._make_grammar_backend, self.jump_forward)
        outputs = OutputProcessor(self.tokenizer, self.eos_token_ids, sampler, self.jump_forward)
        self.scheduler = Scheduler(sc, self.runner, self.cache, outputs)
        logger.info("Engine ready: %s, context %d tokens, KV pool %d tokens, cache=%s, policy=%s, attention=%s, "
                    "torch_compile=%s", self.model_path, self.context_len, max_total, config.cache.name, sc.policy,
                    config.attention.backend, self.runner.torch_compiled)

    def _make_grammar_backend(self):
        """The configured grammar backend, built on the scheduler thread like all of the engine's torch
        work (see ``__init__``). The engine tokenizes forced runs canonically (sgl/engine/jump_forward.py),
        so greedy output is the same with jump-forward on or off without the builtin backend holding
        back the last forced token."""
        from sgl.grammar import make_grammar_backend

        name = self.config.grammar.backend
        options = {"jump_holdback": False} if name == "builtin" else {}
        return self.scheduler.call(lambda _: make_grammar_backend(
            name, self.tokenizer, self.vocab_size, eos_token_ids=self.eos_token_ids, **options)).result()

    # ------------------------------------------------------------ generate
    def generate(self, prompt: Prompt = None, sampling_params: Union[Dict, List[Dict], None] = None,
                 input_ids: Union[List[int], List[List[int]], None] = None, return_logprob=False,
                 logprob_start_len=None, top_logprobs_num=None, return_text_in_logprobs: bool = False,
                 stream: bool = False, rid=None, image_data=None
                 ) -> Union[Dict[str, Any], List[Dict[str, Any]], Iterator[Dict[str, Any]]]:
        """Generate for one prompt (-> dict) or a list (-> list of dicts), with the fields of SGLang's ``/generate``.

        ``stream=True`` (single prompt, n=1) returns an iterator of cumulative results.

        Raises:
            ValueError: bad input (empty or over-long prompt, unknown or invalid sampling params,
                invalid regex/schema, ...), before anything is queued.
        """
        reqs, single = self.builder.build(GenerateRequest(
            prompt, input_ids, sampling_params, return_logprob, logprob_start_len, top_logprobs_num,
            return_text_in_logprobs, stream, rid, image_data))
        self._reserve_rids(reqs)
        if stream:
            return self._stream(reqs[0])
        sinks = [self._submit(r) for r in reqs]
        outs = [self._wait_final(s) for s in sinks]
        return outs[0] if single else outs

    def _submit(self, r: Req, loop=None) -> OutputSink:
        r.sink = OutputSink(loop, on_final=lambda: self._rids.discard(r.rid))
        self.scheduler.add_request(r)
        return r.sink

    def _reserve_rids(self, reqs: List[Req]) -> None:
        """Raises ValueError when a request id is already in flight (ids must be unique to abort by id)."""
        with self._rids_lock:
            ids = [r.rid for r in reqs]
            clash = [i for i in ids if i in self._rids] or [i for i in set(ids) if ids.count(i) > 1]
            if clash:
                raise ValueError(f"rid {clash[0]!r} is already in use by a request in flight")
            self._rids.update(ids)

    @staticmethod
    def _wait_final(sink: OutputSink) -> Dict[str, Any]:
        while True:
            out, final = sink.get()
            if final:
                return out

    def _stream(self, r: Req) -> Iterator[Dict[str, Any]]:
        sink = self._submit(r)

        def it():
            try:
                while True:
                    out, final = sink.get()
                    yield out
                    if final:
                        return
            finally:
                if not sink.finished:
                    self.abort_request(r.rid)
        return it()

    async def async_generate(self, prompt: Prompt = None, sampling_params=None, input_ids=None,
                             return_logprob=False, logprob_start_len=None, top_logprobs_num=None,
                             return_text_in_logprobs: bool = False, stream: bool = False, rid=None,
                             image_data=None):
        """asyncio variant of :meth:`generate`; with ``stream=True`` returns an async iterator."""
        reqs, single = self.builder.build(GenerateRequest(
            prompt, input_ids, sampling_params, return_logprob, logprob_start_len, top_logprobs_num,
            return_text_in_logprobs, stream, rid, image_data))
        self._reserve_rids(reqs)
        loop = asyncio.get_running_loop()
        if stream:
            return self._astream(reqs[0], self._submit(reqs[0], loop))
        sinks = [self._submit(r, loop) for r in reqs]
        try:
            outs = [await self._await_final(s) for s in sinks]
        except asyncio.CancelledError:
            for r, s in zip(reqs, sinks):
                if not s.finished:
                    self.abort_request(r.rid)
            raise
        return outs[0] if single else outs

    @staticmethod
    async def _await_final(sink: OutputSink):
        while True:
            out, final = await sink.aget()
            if final:
                return out

    async def _astream(self, r: Req, sink: OutputSink) -> AsyncIterator[Dict[str, Any]]:
        try:
            while True:
                out, final = await sink.aget()
                yield out
                if final:
                    return
        finally:
            if not sink.finished:
                self.abort_request(r.rid)

    # ------------------------------------------------------------ control
    def abort_request(self, rid: str) -> None:
        """Abort a queued or running request (its result finishes with type "abort"); unknown ids are ignored."""
        self.scheduler.call(lambda s: s.abort(rid))

    def flush_cache(self) -> bool:
        """Drop the prefix cache. Refused (returns False) while requests are in flight."""
        def do(s):
            if s.num_unfinished():
                return False
            s.cache.reset()
            return True
        return self.scheduler.call(do).result()

    def check_integrity(self) -> None:
        """Run the scheduler's idle integrity check (waits for it on the scheduler thread)."""
        self.scheduler.call(lambda s: s.check_idle_integrity()).result()

    def get_model_info(self) -> Dict[str, Any]:
        return {"model_path": self.model_path, "tokenizer_path": self.loaded.model_dir,
                "is_generation": True, "context_length": self.context_len, "vocab_size": self.vocab_size}

    def get_server_info(self) -> Dict[str, Any]:
        """Config, version, and live scheduler/cache/pool stats (token counts)."""
        from omegaconf import OmegaConf

        def snap(s):
            return {
                "stats": s.stats.to_dict(),
                "num_running_reqs": len(s.running) + len(s.pending),
                "num_waiting_reqs": len(s.waiting),
                "max_total_num_tokens": s.pool.size,
                "available_kv_tokens": s.pool.available_size(),
                "cache_total_tokens": s.cache.total_size(),
                "cache_evictable_tokens": s.cache.evictable_size(),
                "cache_protected_tokens": s.cache.protected_size(),
            }
        info = self.scheduler.call(snap).result()
        info["config"] = OmegaConf.to_container(OmegaConf.structured(self.config))
        info["version"] = __version__
        info["model_path"] = self.model_path
        return info

    def shutdown(self) -> None:
        """Stop the scheduler (queued and running requests finish with type "abort"); idempotent."""
        if self._thread.is_alive():
            self.scheduler.stop()
            self._thread.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()


def _shutdown_weak(ref) -> None:
    """atexit: stop a still-running engine so its thread is not killed inside a torch op."""
    engine = ref()
    if engine is not None:
        engine.shutdown()
