from flask import Blueprint

bp = Blueprint("bags", __name__)


@bp.get("/bags")
def index():
    return "bags"
