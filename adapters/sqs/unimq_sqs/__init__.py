"""unimq adapter for AWS SQS (``sqs://``), on boto3. See docs/backends/sqs.md."""

from unimq_sqs.driver import SqsDriver
from unimq_sqs.options import SqsOptions

__all__ = ["SqsDriver", "SqsOptions"]
