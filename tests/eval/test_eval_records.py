"""What an evaluation record says about the environment it ran in."""

import importlib.metadata

import infini_llama
from infini_llama.eval import records


def test_versions_of_a_package_run_from_its_source_tree(monkeypatch):
    # Run from a checkout on PYTHONPATH (not installed), the package has no distribution metadata: its version is
    # the module's own, and a library neither installed nor imported is None.
    real = importlib.metadata.version

    def version(name):
        if name in ("infini-llama", "safetensors"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.delitem(records.sys.modules, "safetensors", raising=False)
    versions = records.library_versions()
    assert versions["infini_llama"] == infini_llama.__version__
    assert versions["safetensors"] is None
    assert versions["torch"] == real("torch")
