"""The fleet's one OpenAI-compatible endpoint: routing by ``model``, streaming passthrough and
on-demand swaps (see docs/proxy.md)."""
