"""Our own conformance run: the shipped suite, parametrised by the unimq plugin over every target
whose adapter is installed (``--unimq-target=NAME`` restricts it; ``-k NAME`` works too)."""

from unimq.testing.conformance.test_ack import *  # noqa: F403
from unimq.testing.conformance.test_batching import *  # noqa: F403
from unimq.testing.conformance.test_capabilities import *  # noqa: F403
from unimq.testing.conformance.test_consumer_lifecycle import *  # noqa: F403
from unimq.testing.conformance.test_delivery import *  # noqa: F403
from unimq.testing.conformance.test_errors import *  # noqa: F403
from unimq.testing.conformance.test_features import *  # noqa: F403
from unimq.testing.conformance.test_lifecycle import *  # noqa: F403
from unimq.testing.conformance.test_operations import *  # noqa: F403
from unimq.testing.conformance.test_ordering import *  # noqa: F403
from unimq.testing.conformance.test_patterns import *  # noqa: F403
from unimq.testing.conformance.test_recoverability import *  # noqa: F403
from unimq.testing.conformance.test_runner import *  # noqa: F403
from unimq.testing.conformance.test_settlement import *  # noqa: F403
from unimq.testing.conformance.test_topology import *  # noqa: F403
