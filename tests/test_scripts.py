"""The bench scripts are not run by the suite (they take minutes and a quiet machine),
so check here that they still parse, start, and name library objects that exist. No
Docker engine needed."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
BENCH = ["bench.py", "bench_migrate.py", "bench_s3.py"]


@pytest.mark.parametrize("name", BENCH)
def test_bench_script_names_exist(name: str) -> None:
    path = SCRIPTS / name
    assert os.access(path, os.X_OK)
    assert path.read_text().startswith("#!/usr/bin/env python3\n")
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in ("volbak", "volbak_s3"):
            module = pytest.importorskip(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{name}: {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "volbak":
                    importlib.import_module(alias.name)


@pytest.mark.parametrize("name", BENCH)
def test_bench_script_help(name: str) -> None:
    subprocess.run([sys.executable, str(SCRIPTS / name), "--help"], check=True,
                   capture_output=True)
