"""The supervisors' pages: the figures of the floor and the scan log."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask_login import current_user, login_required

from .. import queries
from ..access import area_scope, visible_figures
from ..cache import dashboard_figures
from ..extensions import db
from ..replica import reads, reads_from_replica
from ..web import before_arg

bp = Blueprint("dashboard", __name__)

RECENT_SCANS = 20


@bp.get("/")
@login_required
def index():
    return render_template(
        "dashboard/index.html",
        figures=visible_figures(current_user, dashboard_figures(db.session, area_scope(current_user))),
        scans=queries.scan_rows(db.session, current_user, limit=RECENT_SCANS),
    )


@bp.get("/scans")
@login_required
@reads_from_replica
def scans():
    limit = current_app.config["BAGTRACK_PAGE_SIZE"]
    before = before_arg()
    filters = queries.ScanFilters.from_args(request.args)
    # One row more than shown tells whether an older page exists.
    rows = queries.scan_rows(reads(), current_user, limit=limit + 1, before=before, filters=filters)
    next_before = rows[limit - 1].id if len(rows) > limit else None
    return render_template(
        "dashboard/scans.html",
        scans=rows[:limit],
        next_before=next_before,
        before=before,
        filters=filters,
        chosen={**filters.chosen(), **queries.days_chosen(request.args)},
        areas=queries.areas_for(db.session, current_user),
        kinds=queries.SCAN_KINDS,
        outcomes=queries.OUTCOMES,
    )
