"""Stepline: durable DAG batches on a cron schedule or on demand."""

from stepline.core.context import DoNotRetry, StepContext
from stepline.core.definition import BatchDefinition, RetryPolicy, StepDefinition, batch, step
from stepline.core.runners import register
from stepline.core.states import InstanceStatus, StepStatus, TriggerRule
from stepline.errors import Conflict, DefinitionError, NotFound, SteplineError, StoreUnavailable

__all__ = [
    "BatchDefinition",
    "Conflict",
    "DefinitionError",
    "DoNotRetry",
    "InstanceStatus",
    "NotFound",
    "RetryPolicy",
    "StepContext",
    "StepDefinition",
    "StepStatus",
    "SteplineError",
    "StoreUnavailable",
    "TriggerRule",
    "batch",
    "register",
    "step",
]
