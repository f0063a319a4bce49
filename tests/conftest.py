"""Test-wide settings: never reach a model hub, keep CPU threads predictable, and keep what else the host runs
out of what a test prints (a study warns when the CPU is busy at its start: tests/test_host.py tests that)."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _cpu_use_not_measured(monkeypatch):
    import infini_llama.host

    monkeypatch.setattr(infini_llama.host, "busy_cores", lambda *args, **kwargs: None)
