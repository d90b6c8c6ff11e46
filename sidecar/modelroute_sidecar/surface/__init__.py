"""The rest of the OpenAI surface: images, audio, moderations, legacy completions, rerank,
files and batches.

These operations have one wire format (OpenAI's; Cohere/Jina's for rerank) and are passed
through to upstreams that serve them, routed by model like chat with the same engine
(failover, retries, key rotation, metrics). Nothing here translates between dialects: a
route whose backend cannot do an operation answers a 400 naming the backend kinds that can.
"""
