import pytest

from clients.units import format_quantity, parse_quantity


@pytest.mark.parametrize("text, value", [
    ("1.3B", 1.3e9), ("100B", 1e11), ("1M", 1e6), ("5e10", 5e10), ("2.5e21", 2.5e21),
    ("512K", 5.12e5), ("2T", 2e12), ("1Mi", 2**20), ("4ki", 4096), (" 7 ", 7.0), ("1.5g", 1.5e9),
])
def test_parse(text, value):
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "abc", "1.3X", "B", "1e999", "1..2"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_format_round_trips_roughly():
    assert format_quantity(1.3e9) == "1.3B"
    assert format_quantity(2048) == "2.05K"
    assert parse_quantity(format_quantity(1.0e11)) == pytest.approx(1e11)
