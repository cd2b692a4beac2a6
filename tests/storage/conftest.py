import pytest

# The shared checks live in helper modules: rewrite their asserts to show values.
pytest.register_assert_rewrite("tests.storage.faults", "tests.storage.adapters")
