"""Malformed input the fuzz tests do not reach, through a real server on SQLite and PostgreSQL:
INVALID_ARGUMENT naming the field, never INTERNAL or a silently wrong answer."""

import base64

import pytest

from clients.errors import InvalidArgumentError

pytestmark = pytest.mark.integration


def fields_of(exc) -> list[str]:
    return [f for f, _ in exc.value.field_violations]


@pytest.mark.parametrize("value", ["99999999999999999999999", "-5", "0"])
def test_list_runs_refuses_a_page_token_that_is_no_row_id(client, value):
    token = base64.urlsafe_b64encode(f"id:{value}".encode()).decode()
    with pytest.raises(InvalidArgumentError) as exc:
        client.list_runs(page_token=token)
    assert fields_of(exc) == ["page_token"]
