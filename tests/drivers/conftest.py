import pytest

# The shared checks live in a helper module: rewrite its asserts to show values.
pytest.register_assert_rewrite("tests.drivers.conformance")
