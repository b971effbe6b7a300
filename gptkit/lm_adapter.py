"""gptkit's model and tokenizer as an lm-evaluation-harness model (its three request types).

Imported only once lm-eval is known to be installed (gptkit.harness.lm_eval_version). lm-eval's
TemplateLM turns (context, continuation) strings into ids the way its hf backend does (the trailing
spaces of a context go to the continuation; an empty context becomes the end-of-text token); the
scoring itself is gptkit.harness.score_pairs, the rolling windows gptkit.harness.rolling_windows,
the generation gptkit.generate. gptkit.harness's docstring states each rule.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from gptkit.errors import GptkitError
from gptkit.harness import score_pairs, score_rolling

EOT_TEXT = "<|endoftext|>"  # what an end-of-text token reads as (GPT-2's files, gptkit's HF exports)


class GptkitLM(TemplateLM):
    def __init__(self, model, tokenizer, *, batch_size: int = 8, autocast=None):
        super().__init__()
        self.model, self.tok = model, tokenizer
        self.batch_size_per_gpu = batch_size
        self.autocast = autocast

    # --- what TemplateLM and the evaluator ask ----------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_token

    @property
    def prefix_token_id(self) -> int:
        return self.tok.eot_token  # lm-eval's hf backend: BOS, else EOS; both are end-of-text here

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        ids = self.tok.encode(string)  # gptkit's tokenizers add no special tokens
        cut = kwargs.get("left_truncate_len")
        return ids[-cut:] if cut else ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i != self.tok.eot_token])

    # --- the three request types ------------------------------------------------------------------

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        scores = score_pairs(
            self.model,
            pairs,
            vocab_size=self.tok.vocab_size,
            batch_size=self.batch_size_per_gpu,
            autocast=self.autocast,
        )
        for (key, _, _), answer in zip(requests, scores, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [req.args[0] for req in requests]
        totals = score_rolling(
            self.model,
            self.tok,
            [self.tok_encode(t) for t in texts],
            batch_size=self.batch_size_per_gpu,
            autocast=self.autocast,
        )
        for text, total in zip(texts, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self._generate_one(req.args[0], req.args[1]) for req in requests]

    def _generate_one(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        from gptkit.generate import SampleConfig, generate

        kwargs = normalize_gen_kwargs(gen_kwargs, 256)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=EOT_TEXT)
        max_gen = int(kwargs.pop("max_gen_toks"))
        room = self.max_length - max_gen
        if room < 1:
            raise GptkitError(
                f"the task generates up to {max_gen} tokens, which leaves no room for its prompt in a "
                f"context of {self.max_length}; lower max_gen_toks with --gen-kwargs"
            )
        prompt = self.tok_encode(context, left_truncate_len=room) or [self.tok.eot_token]
        sampling = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0) > 0
        cfg = SampleConfig(
            max_new_tokens=max_gen,
            temperature=float(kwargs["temperature"]) if sampling else 0.0,
            top_k=None,
            top_p=kwargs.get("top_p") if sampling else None,
            seed=1234 if sampling else None,
        )
        ids: list[int] = []
        text = ""
        for step in generate(
            self.model,
            prompt,
            cfg,
            vocab_size=self.tok.vocab_size,
            eot_token=self.tok.eot_token,
            autocast=self.autocast() if self.autocast is not None else None,  # generate takes the context itself
        ):
            token = int(step[0])
            if token == self.tok.eot_token:
                break
            ids.append(token)
            text = self.tok.decode(ids)
            if any(stop and stop in text for stop in until):  # the rest would be cut off anyway
                break
        text = self.tok_decode(ids)
        out = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out)
        return out
