"""Faithful local fakes of the upstream providers, with switchable faults.

Import the fakes from their modules, e.g. ``from tests.fakes.openai import FakeOpenAI``.
"""
