"""Ingress dialects: what callers speak (OpenAI Chat, OpenAI Responses, Anthropic Messages)."""
