"""Amazon Bedrock's Converse API: canonical (OpenAI Chat) <-> ``POST /model/{id}/converse``.

``upstream.py`` holds the pure request/response/error translators and the decoder of
ConverseStream events (delivered in the AWS event stream framing: ``wire/aws_eventstream.py``).
Bedrock is only ever an upstream: there is no caller side.
"""
