"""Liveness for load balancers and monitoring."""

from __future__ import annotations

from flask import Blueprint, jsonify

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    """Liveness: answers without any I/O."""
    return jsonify(status="ok")
