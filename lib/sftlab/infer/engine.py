"""The generation engine: what turns chat prompts into answers, behind an interface.

    engine = HFEngine(model_path, dtype="auto")
    generations = engine.generate(prompts, GenerationSettings(max_new_tokens=128))

`GenerationEngine` is the interface the infer stage talks to; `HFEngine` (transformers, one device,
a batched decode loop of its own) implements it, and another engine (vLLM) can implement it too
without the stage changing. Every engine must stop on `models.stop_token_ids` (the chat template's
end-of-turn token and EOS), apply the same `GenerationSettings`, and return the generated token ids
before the stop token, so that every metric keeps its meaning whichever engine ran.

Raises `models.ModelError` when a model folder or its tokenizer does not load (naming the folder).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from sftlab import models
from sftlab.config import Params


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    do_sample: bool = False  # greedy unless True; the sampling values below apply only then
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # None: no top-k filtering
    repetition_penalty: float = 1.0
    seed: int = 0

    @classmethod
    def from_params(cls, params: Params) -> "GenerationSettings":
        infer = params.infer
        return cls(max_new_tokens=infer.max_new_tokens, do_sample=infer.do_sample, temperature=infer.temperature,
                   top_p=infer.top_p, top_k=infer.top_k, repetition_penalty=infer.repetition_penalty,
                   seed=params.seed if infer.seed is None else infer.seed)

    def fingerprint(self) -> dict:
        """The settings that change the output (the seed only when sampling)."""
        settings = asdict(self)
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k", "seed"):
                settings.pop(key)
        return settings


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]  # generated tokens before the stop token (stop token and padding cut off)
    text: str  # token_ids decoded, special tokens skipped
    finish_reason: Literal["eos", "length"]


class GenerationEngine(Protocol):
    """Generates answers for a batch of chat prompts, in order. `tokenizer` is the model's own: the
    stage counts prompt lengths and metric tokens with it. Another backend (vLLM on GPUs) implements
    this and is passed to `infer.run(plan, make_engine=...)`; the stage does not change."""

    tokenizer: object

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings) -> list[Generation]: ...


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The chat template with the generation prompt: the text the model continues."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class HFEngine:
    """A transformers model on one device, decoded step by step with a KV cache.

    A batch is left-padded (every prompt ends at the last position, where generation continues), with
    position ids counted from the attention mask, under `torch.inference_mode`. A row that emits the
    chat template's end-of-turn token or EOS leaves the batch at once: its cache rows are dropped, so
    the rest of the batch does not carry it to the longest answer. (`model.generate` keeps computing
    finished rows until the longest answer ends: 45% of its decoding work on the demo benchmark.)

    Only `GenerationSettings` steer decoding; the checkpoint's own generation config is not read.
    Greedy output of a batch equals the output of its prompts one at a time in fp32 (the tests check
    it on the builtin model); in lower precision, padding changes the rounding and may flip a near-tie.
    The repetition penalty sees each row's own prompt and answer, never the padding.
    """

    def __init__(self, model_path: str, dtype: str = "auto", device: str | None = None,
                 chat_template: str | None = None):
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path)
            if chat_template:  # model.chat_template: the template the checkpoints were trained with
                self.tokenizer.chat_template = chat_template
            self.model = models.load_model(model_path, dtype, device)
        except models.ModelError:
            raise
        except Exception as e:  # a broken folder fails in many ways (JSON, safetensors header, shapes)
            raise models.ModelError(f"{model_path}: cannot load the model or its tokenizer: "
                                    f"{type(e).__name__}: {e}") from e
        self.tokenizer.padding_side = "left"
        self.stop_ids = models.stop_token_ids(self.tokenizer)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.stop_ids[0]  # padding is masked: any id will do

    def generate(self, prompts: list[list[dict]], settings: GenerationSettings) -> list[Generation]:
        import torch
        from transformers import DynamicCache

        device = self.model.device
        texts = [prompt_text(self.tokenizer, messages) for messages in prompts]
        # The template already holds the special tokens it needs: add none.
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        mask = batch["attention_mask"]
        step_ids = batch["input_ids"]
        step_positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # What the repetition penalty looks at: padding replaced by the row's first real token.
        first_real = step_ids.gather(1, mask.argmax(-1, keepdim=True))
        history = torch.where(mask.bool(), step_ids, first_real)
        processors = self._logits_processors(settings)
        generator = torch.Generator(device).manual_seed(settings.seed) if settings.do_sample else None
        stop = torch.tensor(self.stop_ids, device=device)

        cache = DynamicCache(config=self.model.config)
        live = torch.arange(len(prompts), device=device)  # batch row -> index of its prompt
        answers: list[list[int]] = [[] for _ in prompts]
        finish: list[str] = ["length"] * len(prompts)
        with torch.inference_mode():
            for step in range(settings.max_new_tokens):
                logits = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions,
                                    cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :].float()
                logits = processors(history, logits)
                if generator is None:
                    tokens = logits.argmax(-1)
                else:
                    tokens = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
                stopped = torch.isin(tokens, stop)
                for row, token, ended in zip(live.tolist(), tokens.tolist(), stopped.tolist()):
                    if ended:
                        finish[row] = "eos"
                    else:
                        answers[row].append(token)
                if stopped.all() or step == settings.max_new_tokens - 1:
                    break
                if stopped.any():  # finished rows leave the batch and its cache
                    keep = (~stopped).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    live, tokens, mask = live[keep], tokens[keep], mask[keep]
                    history, step_positions = history[keep], step_positions[keep]
                step_ids = tokens[:, None]
                step_positions = step_positions[:, -1:] + 1
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                history = torch.cat([history, step_ids], dim=1)
        return [Generation(token_ids=ids, text=self.tokenizer.decode(ids, skip_special_tokens=True),
                           finish_reason=reason) for ids, reason in zip(answers, finish)]

    @staticmethod
    def _logits_processors(settings: GenerationSettings):
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        processors = LogitsProcessorList()
        if settings.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty)))
        if settings.do_sample:  # the order of transformers' own sampling
            if settings.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k:
                processors.append(TopKLogitsWarper(settings.top_k))
            if settings.top_p < 1.0:
                processors.append(TopPLogitsWarper(settings.top_p))
        return processors
