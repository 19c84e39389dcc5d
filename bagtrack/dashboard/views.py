from flask import Blueprint

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    return "dashboard"


@bp.get("/scans")
def scans():
    return "scans"
