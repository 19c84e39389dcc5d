from flask import Blueprint

bp = Blueprint("bills", __name__)


@bp.get("/bills")
def index():
    return "bills"
