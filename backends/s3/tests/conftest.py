"""The core's test fixtures (tests/conftest.py: engines, resources, S3 servers, ...) for
the S3 plugin's tests, and tests/ on sys.path for its helpers (cli_runner, fidelity).

pytest imports every conftest.py outside a package as the module ``conftest``, so the
core's is loaded here once more under a name of its own; its fixtures and its
pytest_generate_tests hook then apply to this directory as they do to tests/.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

CORE_TESTS = Path(__file__).resolve().parents[3] / "tests"
if str(CORE_TESTS) not in sys.path:
    sys.path.insert(0, str(CORE_TESTS))


def _load_core():
    name = "volbak_core_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CORE_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    with warnings.catch_warnings():
        # its register_assert_rewrite("volbak.testing") has run once already
        warnings.simplefilter("ignore")
        spec.loader.exec_module(mod)
    return mod


_core = _load_core()
globals().update(
    {k: v for k, v in vars(_core).items() if not k.startswith("_") and k != "annotations"}
)
