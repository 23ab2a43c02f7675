"""Prices, token estimates and cost.

`judge.prices` in params (model -> {input_per_mtok, output_per_mtok}, US$ per million tokens) is laid
over `DEFAULT_PRICES`. A model is priced by its own entry or, failing that, by the longest entry its
name starts with ("gpt-4o-mini-2024-07-18" -> "gpt-4o-mini"). A model with no price has no cost
(None), and then a `max_cost_usd` budget cannot be kept: `price_for` callers refuse to start.

Estimates come before any request, so they use no tokenizer: ~4 characters per token for ASCII
text and ~1 token per character otherwise (Hangul syllables are roughly one token each in OpenAI's
tokenizers) — rough, on the high side for Korean, good enough to decide whether to press run.
"""

from __future__ import annotations

# US$ per 1M tokens, list prices; params override and extend this table.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
    "gpt-4o": {"input_per_mtok": 2.50, "output_per_mtok": 10.00},
    "gpt-4.1": {"input_per_mtok": 2.00, "output_per_mtok": 8.00},
    "gpt-4.1-mini": {"input_per_mtok": 0.40, "output_per_mtok": 1.60},
    "gpt-4.1-nano": {"input_per_mtok": 0.10, "output_per_mtok": 0.40},
}

# What one criterion's {reason, score} costs in completion tokens, plus the JSON around them.
COMPLETION_TOKENS_PER_CRITERION = 60
COMPLETION_TOKENS_OVERHEAD = 20


BATCH_DISCOUNT = 0.5  # the Batch API bills half the list price (results within 24 h)


def price_for(model: str, overrides: dict[str, dict[str, float]] | None = None,
              batch: bool = False) -> dict[str, float] | None:
    """The model's price per 1M tokens; with `batch`, the Batch API's (half the list price)."""
    table = {**DEFAULT_PRICES, **(overrides or {})}
    if model in table:
        price = table[model]
    else:
        prefixes = [name for name in table if model.startswith(name)]
        price = table[max(prefixes, key=len)] if prefixes else None
    if price is None or not batch:
        return price
    return {name: value * BATCH_DISCOUNT for name, value in price.items()}


def cost_usd(price: dict[str, float] | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    if price is None:
        return None
    return (prompt_tokens * price.get("input_per_mtok", 0.0)
            + completion_tokens * price.get("output_per_mtok", 0.0)) / 1e6


def estimate_tokens(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ch.isascii())
    return ascii_chars // 4 + (len(text) - ascii_chars) + 1


def estimate_completion_tokens(n_criteria: int) -> int:
    return n_criteria * COMPLETION_TOKENS_PER_CRITERION + COMPLETION_TOKENS_OVERHEAD
