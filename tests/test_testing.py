"""The public ``trustp2p.testing.Network`` helper: what it refuses."""

from __future__ import annotations

import pytest

from trustp2p.exceptions import UsageError
from trustp2p.testing import Network


def test_network_faults_need_the_memory_driver() -> None:
    network = Network(2, driver="ws")
    with pytest.raises(UsageError, match=r"^partition\(\) needs the memory driver$"):
        network.partition([[0], [1]])
    with pytest.raises(UsageError, match=r"^heal\(\) needs the memory driver$"):
        network.heal()
    with pytest.raises(UsageError, match=r"^set_delay\(\) needs the memory driver$"):
        network.set_delay(0.1)
