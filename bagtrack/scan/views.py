from flask import Blueprint

bp = Blueprint("scan", __name__)


@bp.get("/scan")
def page():
    return "scan"
