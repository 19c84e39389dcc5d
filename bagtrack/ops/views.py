"""Liveness, readiness and metrics for load balancers and monitoring (no login)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from .. import observability, replica
from ..extensions import limiter
from ..web import json_error

bp = Blueprint("ops", __name__)
# Probes and scrapes come from machines on a schedule; a rate limit would only make them flap.
limiter.exempt(bp)


@bp.get("/health")
def health():
    """Liveness: answers without any I/O."""
    return jsonify(status="ok")


@bp.get("/ready")
def ready():
    """Readiness: 200 while the database answers (``degraded`` without Redis), else 503;
    and where reads of lists and exports go (a replica down only sends them to the primary)."""
    report = observability.readiness()
    report["replica"] = replica.status()
    response = jsonify(report)
    response.status_code = 503 if report["status"] == "unavailable" else 200
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics():
    """Prometheus metrics, for the metrics token or allow-listed addresses only."""
    config = current_app.config
    if not observability.may_scrape(config["BAGTRACK_METRICS_TOKEN"], config["BAGTRACK_METRICS_ALLOW"]):
        return json_error("forbidden", "Metrics need the metrics token or an allow-listed address.", 403)
    body, content_type = observability.exposition()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})
