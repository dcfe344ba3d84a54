"""Estimated cost of an upstream call, from a per-model price table."""

from __future__ import annotations

# USD per million tokens (input, output), from Groq's public on-demand price list
# (groq.com/pricing, read in 2025). A model missing here is counted as free, and the
# /v1/metrics and /v1/query figures then understate the savings rather than invent them.
PRICE_SOURCE = "Groq on-demand prices per million tokens (groq.com/pricing, 2025)"

PRICES_PER_MILLION: dict[str, tuple[float, float]] = {
    "llama-3.1-8b-instant": (0.05, 0.08),
    "llama-3.3-70b-versatile": (0.59, 0.79),
    "meta-llama/llama-4-scout-17b-16e-instruct": (0.11, 0.34),
    "meta-llama/llama-4-maverick-17b-128e-instruct": (0.20, 0.60),
    "qwen/qwen3-32b": (0.29, 0.59),
    "openai/gpt-oss-20b": (0.10, 0.50),
    "openai/gpt-oss-120b": (0.15, 0.75),
}


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """Estimated price of one call in USD (0.0 for a model without a known price)."""
    price_in, price_out = PRICES_PER_MILLION.get(model, (0.0, 0.0))
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1_000_000
