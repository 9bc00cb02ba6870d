"""Make the integration fixtures (make_node, fake_peer, capture ...) apply here too.

tests/integration/conftest.py is loaded under its own module name (a plain
`from conftest import *` would import this very file, which pytest also names
`conftest`), and everything public in it is re-exported: its fixtures and its
report hook then apply to the tests in this folder too. The folder goes on
sys.path so the helper modules (`node`, `fakepeer`, ...) import as they do for the
integration tests; tests import what they use from those, never from a conftest.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
if str(INTEGRATION) not in sys.path:
    sys.path.insert(0, str(INTEGRATION))

_NAME = "p2p_integration_harness"
if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, INTEGRATION / "conftest.py")
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)

from p2p_integration_harness import *  # noqa: E402, F403
