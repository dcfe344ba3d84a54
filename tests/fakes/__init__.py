"""Local stand-ins for external services, shared by tests and benchmarks."""

from __future__ import annotations

from tests.fakes.openai_server import FakeOpenAI, Fault

__all__ = ["FakeOpenAI", "Fault"]
