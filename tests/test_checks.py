"""The shared input checks of ``biasloss._checks``: one message format for every command."""

from __future__ import annotations

import math

import pytest

from biasloss._checks import positive, positive_flags


def test_positive_passes_none_and_positive_values_through():
    assert positive("--epochs", None) is None
    assert positive("--epochs", 3) == 3
    assert positive("--lr", 0.5, kind=float) == 0.5
    assert positive("count", 1, kind=int) == 1


@pytest.mark.parametrize(
    "name, value, kind, message",
    [
        ("--epochs", 0, None, "--epochs must be positive, got 0"),
        ("--batch-size", -3, None, "--batch-size must be positive, got -3"),
        ("lr", math.nan, None, "lr must be positive, got nan"),
        ("--lr", math.inf, float, "--lr must be a positive number, got inf"),
        ("--lr", 0.0, float, "--lr must be a positive number, got 0.0"),
        ("count", True, int, "count must be a positive int, got True"),
        ("count", 2.0, int, "count must be a positive int, got 2.0"),
        ("count", 0, int, "count must be a positive int, got 0"),
    ],
)
def test_positive_messages(name, value, kind, message):
    with pytest.raises(ValueError) as e:
        positive(name, value, kind=kind)
    assert str(e.value) == message


def test_positive_flags_name_the_flag():
    positive_flags({"epochs": 2, "limit": None}, ("epochs", "limit", "absent"))
    with pytest.raises(ValueError, match="^--stop-after must be positive, got 0$"):
        positive_flags({"epochs": 2, "stop_after": 0}, ("epochs", "stop_after"))
