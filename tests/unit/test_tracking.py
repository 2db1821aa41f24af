"""What the launcher integrations report after an exception (no server)."""

import pytest

from clients.integrations.tracking import outcome_of_exception
from clients.models import RunStatus


@pytest.mark.parametrize("error, status", [
    (RuntimeError("nan in gradients"), RunStatus.DIVERGED),
    (FloatingPointError(), RunStatus.DIVERGED),
    (KeyboardInterrupt(), RunStatus.FAILED),
    (SystemExit(143), RunStatus.FAILED),
    (MemoryError(), RunStatus.FAILED),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"), RunStatus.FAILED),
])
def test_exceptions_map_to_outcomes(error, status):
    assert outcome_of_exception(error, 3.0).status is status
