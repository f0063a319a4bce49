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


@pytest.fixture(scope="session")
def benchmark_script():
    """A loader of `benchmarks/<name>.py` as a module, with that folder on the import path as when it runs as a
    script (the scripts import their shared helpers from beside them)."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
