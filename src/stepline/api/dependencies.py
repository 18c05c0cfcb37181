"""What endpoints receive: the service and the metrics the app was built with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stepline.api.metrics import Metrics
from stepline.service import Stepline

__all__ = ["MetricsDep", "ServiceDep", "metrics_of", "service_of"]


def service_of(request: Request) -> Stepline:
    """The :class:`Stepline` facade given to ``create_app`` (kept in ``app.state``)."""
    service: Stepline = request.app.state.service
    return service


def metrics_of(request: Request) -> Metrics:
    """The app's :class:`Metrics` (kept in ``app.state``)."""
    metrics: Metrics = request.app.state.metrics
    return metrics


ServiceDep = Annotated[Stepline, Depends(service_of)]
MetricsDep = Annotated[Metrics, Depends(metrics_of)]
