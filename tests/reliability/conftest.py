"""Security tests share one throwaway CA per module (tests/reliability/security_support.py)."""

import pytest
from security_support import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and an unrelated CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))
