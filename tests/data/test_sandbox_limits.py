"""The sandbox limits a user sets through R1KIT_SANDBOX_* environment variables."""

import pytest

from r1kit.config import UserError
from r1kit.sandbox import sandbox_limits


def test_no_variables_keep_the_defaults():
    assert sandbox_limits({}) == {}


def test_variables_convert_to_sandbox_arguments():
    env = {"R1KIT_SANDBOX_TIMEOUT_S": "0.5", "R1KIT_SANDBOX_MEMORY_MB": "512", "R1KIT_SANDBOX_WORKERS": "3"}
    assert sandbox_limits(env) == {"timeout": 0.5, "memory": 512 << 20, "workers": 3}


@pytest.mark.parametrize(
    "name, value",
    [
        ("R1KIT_SANDBOX_TIMEOUT_S", "soon"),
        ("R1KIT_SANDBOX_TIMEOUT_S", "0"),
        ("R1KIT_SANDBOX_TIMEOUT_S", "nan"),
        ("R1KIT_SANDBOX_TIMEOUT_S", "inf"),
        ("R1KIT_SANDBOX_MEMORY_MB", "8"),
        ("R1KIT_SANDBOX_WORKERS", "0"),
    ],
)
def test_a_bad_value_is_one_user_error_naming_the_variable(name, value):
    with pytest.raises(UserError, match=name) as err:
        sandbox_limits({name: value})
    assert "\n" not in str(err.value)
