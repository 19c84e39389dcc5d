"""The supervisors' pages: the figures of the floor and the scan log."""

from __future__ import annotations

from flask import Blueprint, current_app, make_response, render_template, request
from flask_login import current_user, login_required

from .. import queries
from ..access import area_scope, visible_figures
from ..database import reads_only
from ..extensions import db
from ..figures import dashboard_figures, floor_charts, latest_scans
from ..models import utcnow
from ..replica import reads, reads_from_replica
from ..web import before_arg

bp = Blueprint("dashboard", __name__)


def _live_figures() -> dict:
    """What the refreshing part of the dashboard shows: figures, charts and the latest scans (rendered)."""
    scope = area_scope(current_user)
    return {
        "figures": visible_figures(current_user, dashboard_figures(db.session, scope)),
        "charts": floor_charts(db.session, scope, with_bills=current_user.has_role("biller")),
        "scan_table": latest_scans(db.session, current_user._get_current_object()),
        "now": utcnow(),
    }


@bp.get("/")
@login_required
@reads_only
def index():
    return render_template(
        "dashboard/index.html", refresh_s=current_app.config["BAGTRACK_DASHBOARD_REFRESH_S"], **_live_figures()
    )


@bp.get("/dashboard/live")
@login_required
@reads_only
def live():
    """The dashboard's figures and charts alone, fetched again and again by the page's script."""
    response = make_response(render_template("dashboard/_live.html", **_live_figures()))
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/scans")
@login_required
@reads_from_replica
@reads_only
def scans():
    limit = current_app.config["BAGTRACK_PAGE_SIZE"]
    before = before_arg()
    filters = queries.ScanFilters.from_args(request.args)
    rows, next_before = queries.scan_page(reads(), current_user, limit=limit, before=before, filters=filters)
    return render_template(
        "dashboard/scans.html",
        scans=rows,
        next_before=next_before,
        before=before,
        filters=filters,
        chosen={**filters.chosen(), **queries.days_chosen(request.args)},
        areas=queries.areas_for(db.session, current_user),
        kinds=queries.SCAN_KINDS,
        outcomes=queries.OUTCOMES,
    )
