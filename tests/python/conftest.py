"""Shared fixtures. The package comes from PYTHONPATH (ctest sets <build>/python)."""
import importlib.util
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_original():
    """PyTorch's NodeMetadata as written out in benchmarks/python_original.py."""
    spec = importlib.util.spec_from_file_location("python_original", REPO / "benchmarks" / "python_original.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def original():
    return load_original()


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("NODEMETA_CLI")
    if not path or not os.path.exists(path):
        pytest.skip("NODEMETA_CLI (the nodemeta command) not given")
    return path
