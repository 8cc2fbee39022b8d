"""lm-evaluation-harness backend: our jitted BLOOM/OPT scoring and generation behind lm-eval's `LM` API.

From Python, import this module (it registers the model as `teacherlm_jax`), then

    lm_eval.simple_evaluate(model="teacherlm_jax", model_args="pretrained=DIR,dtype=bfloat16,batch_size=16",
                            tasks=["mmlu"])

From the command line, this module runs lm-eval's own CLI with the backend registered:

    python -m teacherlm_jax.lm_eval run --model teacherlm_jax \
        --model_args pretrained=DIR,dtype=bfloat16,batch_size=16,mesh=data:-1 --tasks mmlu

model_args: `pretrained` (a Hugging Face directory or hub id, BLOOM or OPT, or a training run's workdir),
`dtype` (float32 | bfloat16), `batch_size` (rows per compiled call, global over the mesh), `max_length`
(default: the model's positions), `max_gen_toks` (256), `add_bos_token`, `tokenizer` (default: the
model's), `mesh` (`axis:size` pairs joined by `;`, e.g. `data:2;tensor:4`, over this process's
devices; default one device), `scan_layers` (default true: scoring programs trace and compile one block
whatever the depth, faster than listed layers (benchmarks/lm_eval_backend.py); the first generate_until request then makes
the decode layout, a copy of the blocks' weights; false shares them, for generation on tight memory).
Requests are scored as lm-eval's `hf` backend scores them (its tokenization via `TemplateLM`, the last
`max_length + 1` tokens of context + continuation, greedy generation cut at the first stop string);
contexts whose continuations are all single tokens (letters) are scored in one row, as the eval job does
(`teacherlm_jax.eval.scoring`).

What the requests paid for programs (`teacherlm_jax.eval.throughput`: seconds, programs obtained, their seconds
by phase) is logged after each call and summed in `get_model_info()["throughput"]`, which lm-eval puts in the
results' `config`.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import jax
import lm_eval.models  # noqa: F401  (lm-eval's own backends, registered before ours)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from teacherlm_jax.data.padding import left_pad, pad_token_id
from teacherlm_jax.errors import ConfigError
from teacherlm_jax.eval.scoring import Row, score_rows
from teacherlm_jax.eval.throughput import CostMeter, WorkCost
from teacherlm_jax.generation import generate
from teacherlm_jax.init_from import resolve
from teacherlm_jax.sharding import DEFAULT_RULES, make_mesh, parse_rules

log = logging.getLogger(__name__)


def parse_mesh(spec: str | None):
    """(mesh, rules) from `axis:size;axis:size` (None or "": one device)."""
    if not spec:
        return None, None
    sizes = {}
    for part in str(spec).split(";"):
        axis, _, size = part.partition(":")
        try:
            sizes[axis.strip()] = int(size)
        except ValueError:
            raise ValueError(f"model_args mesh={spec!r}: expected axis:size pairs joined by ';', e.g. "
                             f"'data:2;tensor:4'") from None
    try:
        mesh = make_mesh(sizes)
    except ConfigError as e:
        raise ValueError(f"model_args mesh={spec!r}: {e}") from None
    return mesh, parse_rules(DEFAULT_RULES, mesh)


@register_model("teacherlm_jax")
class TeacherLMJax(TemplateLM):
    """An lm-eval `LM` over a teacherlm_jax model (see the module docstring for `model_args`)."""

    def __init__(self, pretrained: str, dtype: str = "float32", batch_size: int | str = 16,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos_token: bool = False,
                 tokenizer: str | None = None, mesh: str | None = None, scan_layers: bool | str = True,
                 device: str | None = None, max_batch_size: int | None = None, **unknown: Any):
        super().__init__()
        if unknown:
            raise ValueError(f"model_args {sorted(unknown)} are not teacherlm_jax's: it takes pretrained, dtype, "
                             f"batch_size, max_length, max_gen_toks, add_bos_token, tokenizer, mesh, scan_layers")
        if device not in (None, "cpu", "cuda", "tpu"):  # lm-eval's --device: jax places the model itself
            log.warning("device=%r is ignored: jax uses its default backend (%s)", device, jax.default_backend())
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size=auto is not supported: give a number (rows per compiled call)")
        self.mesh, self.rules = parse_mesh(mesh)
        scan_layers = str(scan_layers).lower() not in ("false", "0", "no")  # model_args arrive as strings
        source = resolve(dict(init_from=pretrained, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers),
                         key="model_args")  # a HF directory, hub id or training run, as every job reads it
        if self.mesh is None:  # no mesh: the parameters on this process's first device
            one = make_mesh({}, jax.local_devices()[:1])
            self.model = source.build(one, parse_rules(DEFAULT_RULES, one))
        else:
            self.model = source.build(self.mesh, self.rules)
        self.tokenizer = source.load_tokenizer(tokenizer, key="model_args tokenizer")
        self._batch_size = int(batch_size)
        self._max_length = int(max_length or self.model.config.max_position_embeddings)
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = bool(add_bos_token)
        self._decoder = None  # the model's decode layout, made by the first generate_until request
        self._cost = WorkCost()  # what the requests so far paid (get_model_info)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """model_args first: lm-eval's CLI always passes its own `--batch_size` (default 1) as well."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    def get_model_info(self) -> dict[str, Any]:
        """lm-eval adds this to its results' `config` once the tasks are run: the requests' seconds, the programs
        they obtained (compiled or read from the persistent cache) and those programs' seconds by phase."""
        return {"throughput": self._cost.to_json()}

    def _paid(self, meter: CostMeter, what: str) -> None:
        cost = meter.cost()
        self._cost += cost
        log.info("teacherlm_jax: %s: %s", what, cost)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=special)

    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether the continuation is greedy) per request."""
        meter = CostMeter()
        rows, where = [], []  # where[i]: (row, position in the row) of request i
        # lm-eval's `hf` backend groups requests by context + continuation[:-1] and scores a group with one
        # forward; here such a group is one row (the continuations differ only in their last token).
        shared: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
        for _, whole, continuation in requests:
            continuation = tuple(continuation)
            keep = self.max_length + 1 - len(continuation)  # lm-eval keeps the last max_length + 1 tokens
            if keep < 1 or not continuation:
                raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length="
                                 f"{self.max_length}")
            context = tuple(whole[-keep:])
            key = (context, continuation[:-1])
            if key in shared:
                row = rows[shared[key]]
                rows[shared[key]] = Row(row.question, row.choices + (len(row.choices),), row.context,
                                        row.continuations + (continuation,), row.truncated)
                where.append((shared[key], len(row.choices)))
                continue
            shared[key] = len(rows)
            where.append((len(rows), 0))
            rows.append(Row(len(rows), (0,), context, (continuation,), len(whole) > keep))
        scored = score_rows(self.model, rows, batch_size=self.batch_size, max_length=self.max_length,
                            mesh=self.mesh, rules=self.rules)
        out = []
        for (strings, _, _), (r, c) in zip(requests, where):
            sums, greedy = scored[r]
            out.append((float(sums[c]), bool(greedy[c])))
            if strings is not None:  # rolling windows have none
                self.cache_hook.add_partial("loglikelihood", strings, out[-1])
        self._paid(meter, f"{len(requests)} log-likelihood requests")
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihoods over lm-eval's disjoint rolling windows of `max_length` tokens."""
        windows, owners = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, per the task's generation_kwargs) continuations, cut at the first stop string;
        a generation kwarg this backend does not know is an error, not ignored."""
        meter = CostMeter()
        eos = self.tokenizer.decode([self.eot_token_id])
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            sample, temperature = bool(kwargs.pop("do_sample", False)), float(kwargs.pop("temperature", 0.0))
            settings = (tuple(until + [eos]), int(kwargs.pop("max_gen_toks", self._max_gen_toks)),
                        temperature if sample else 0.0, int(kwargs.pop("top_k", 0)), float(kwargs.pop("top_p", 1.0)))
            if kwargs:  # nothing a task asks for is dropped silently
                raise ValueError(f"generation_kwargs {sorted(kwargs)} are not supported by teacherlm_jax (it takes "
                                 f"until, max_gen_toks, do_sample, temperature, top_k, top_p)")
            groups.setdefault(settings, []).append(i)
        for (until, max_new, temperature, top_k, top_p), members in groups.items():
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks={max_new} must be below max_length={self.max_length}")
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):] for i in batch]
                ids, mask = left_pad(prompts, max(map(len, prompts)), pad_token_id(self.tokenizer, self.model.config))
                if self._decoder is None:
                    self._decoder = self.model.for_decoding()
                result = generate(self._decoder, ids, mask, max_new_tokens=max_new, temperature=temperature,
                                  top_k=top_k, top_p=top_p, eos_token_id=self.eot_token_id, mesh=self.mesh,
                                  rules=self.rules, logprobs=False)
                for i, tokens, length in zip(batch, result.tokens, result.lengths):
                    text = self.tokenizer.decode(tokens[:length], skip_special_tokens=False)
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        self._paid(meter, f"{len(requests)} generate_until requests")
        return out  # type: ignore[return-value]


def main() -> None:
    """lm-eval's command line, with this backend registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "lm_eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
