"""Wire formats, one package each, both directions in it.

``wire/<format>/`` (openai_chat, openai_responses, anthropic, gemini):

* ``validation.py``: the caller requests' shapes (TypedDicts, checked by ``shapes.py``; pydantic
  words the 400s);
* ``caller.py``: the format as a caller dialect (format -> canonical, canonical -> format,
  stream encoder, error bodies, and the tap that reads a passed-through answer);
* ``upstream.py``: the format toward an upstream (canonical -> request, response and stream
  -> canonical, error bodies -> :class:`base.UpstreamErrorInfo`), with its usage and stop
  reasons; a format that only ever passes through to its upstreams (Responses) has none.

``canonical`` (the package root's ``canonical.py``) is the form between the two: Chat
Completions, typed. ``pairs.py`` is the table of which caller dialect passes through to or
is translated for which provider kind; ``providers/`` hold the kinds (URLs, auth, keys).
"""
