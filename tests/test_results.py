import json

import numpy as np
import pytest

from fgia.results import target


def test_a_target_is_met_on_the_right_side_of_its_threshold():
    assert target(0.81, 0.8, ">=") == {"value": 0.81, "threshold": 0.8, "op": ">=", "met": True}
    assert not target(0.79, 0.8, ">=")["met"]
    assert target(4.5, 4.5, "<=")["met"]
    assert not target(4.6, 4.5, "<=")["met"]


def test_numpy_scalars_become_json_numbers():
    assert json.loads(json.dumps(target(np.float32(0.5), 1, "<=")))["value"] == 0.5


def test_an_unknown_comparison_is_refused():
    with pytest.raises(ValueError, match="op"):
        target(1.0, 1.0, ">")
