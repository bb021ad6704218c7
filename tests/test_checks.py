"""helpers._checks: one policy for every argument check (bool refused, TypeError for a wrong type,
ValueError out of range, both naming the argument and its range)."""
import math

import pytest
from torch import nn

from helpers._checks import check_fraction, check_int, check_number, get_submodule, set_submodule


def test_check_int():
    assert check_int("n", 3, minimum=1) == 3
    assert check_int("n", 5, minimum=0, maximum=5) == 5
    for value in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match=r"n must be an integer >= 1, got "):
            check_int("n", value, minimum=1)
    with pytest.raises(ValueError, match=r"n must be an integer >= 1, got 0"):
        check_int("n", 0, minimum=1)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 1\], got 2"):
        check_int("rank", 2, minimum=0, maximum=1)
    with pytest.raises(ValueError, match=r"k must be an integer <= 3, got 4"):
        check_int("k", 4, maximum=3)


def test_check_number_and_fraction():
    assert check_number("lr", 1, 0, low_open=True) == 1.0
    with pytest.raises(ValueError, match=r"lr must be a positive, finite number, got 0"):
        check_number("lr", 0, 0, low_open=True)
    with pytest.raises(ValueError, match="lr must be a positive, finite number, got inf"):
        check_number("lr", math.inf, 0, low_open=True)
    with pytest.raises(TypeError, match="lr must be a positive, finite number, got True"):
        check_number("lr", True, 0, low_open=True)
    assert check_fraction("p", 0) == 0.0
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got 1"):
        check_fraction("p", 1)
    assert check_fraction("p", 1, allow_one=True) == 1.0
    with pytest.raises(ValueError, match=r"p must be a number in \(0, 1\), got 0"):
        check_fraction("p", 0, allow_zero=False)
    with pytest.raises(ValueError, match=r"x must be a number in \[-1, 2\], got nan"):
        check_number("x", math.nan, -1, 2)


def test_submodule_lookup_and_replacement():
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 1)))
    assert get_submodule(model, "1.1") is model[1][1]
    with pytest.raises(ValueError, match=r"layer '2' is not a layer of the model; layers: \['0', '1.1'\]"):
        get_submodule(model, "2", "layer", (nn.Linear,))
    with pytest.raises(ValueError, match="layer '1.0' is not a layer"):
        get_submodule(model, "1.0", "layer", (nn.Linear,))  # exists, but not of the accepted types
    with pytest.raises(TypeError, match="layer must be a layer name"):
        get_submodule(model, 0, "layer")
    set_submodule(model, "1.1", nn.Identity())
    assert isinstance(model[1][1], nn.Identity)
    set_submodule(model, "0", nn.Identity())
    assert isinstance(model[0], nn.Identity)
