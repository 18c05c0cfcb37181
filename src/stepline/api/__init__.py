"""The HTTP API shell (FastAPI): endpoints, bearer-token security and Prometheus metrics.

FastAPI is imported only in this package (see docs/architecture.md).
"""

from stepline.api.app import create_app, create_app_from_env
from stepline.api.metrics import Metrics, StepMetrics, observe_scheduler_lag
from stepline.api.security import check_bind

__all__ = [
    "Metrics",
    "StepMetrics",
    "check_bind",
    "create_app",
    "create_app_from_env",
    "observe_scheduler_lag",
]
