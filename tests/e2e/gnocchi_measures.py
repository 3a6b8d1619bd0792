"""Reading what reached Gnocchi: measures of a resource's metric, waited for.

Every archive policy the meters use (ceilometer-low, ceilometer-low-rate,
ceilometer-cmt-low) has one 5-minute granularity, so a point is
``[bucket start, 300.0, value]``.
"""

from __future__ import annotations

from typing import Any

import services
from services import Stack, wait_for

GRANULARITY = 300


def measures(st: Stack, resource_type: str, resource_id: str, metric: str,
             aggregation: str = "mean") -> list[list[Any]]:
    result: list[list[Any]] = st.gnocchi.get(
        f"/v1/resource/{resource_type}/{resource_id}/metric/{metric}/measures"
        f"?aggregation={aggregation}&granularity={GRANULARITY}&refresh=true")
    return result


def wait_measures(st: Stack, resource_type: str, resource_id: str, metric: str,
                  count: int = 1, aggregation: str = "mean",
                  timeout: float = 60) -> list[list[Any]]:
    def enough() -> list[list[Any]] | None:
        try:
            got = measures(st, resource_type, resource_id, metric, aggregation)
        except services.ServiceError:  # resource or metric not created yet
            return None
        return got if len(got) >= count else None

    result: list[list[Any]] = wait_for(
        f"{count} {aggregation} point(s) of {metric} on {resource_type} {resource_id}",
        enough, timeout, interval=1)
    return result


def metric_of(st: Stack, resource_type: str, resource_id: str, meter: str) -> dict[str, Any]:
    """The Gnocchi metric ``meter`` of a resource (unit, archive policy, ...)."""
    metrics = st.gnocchi.get(f"/v1/resource/{resource_type}/{resource_id}")["metrics"]
    result: dict[str, Any] = st.gnocchi.get(f"/v1/metric/{metrics[meter]}")
    return result
