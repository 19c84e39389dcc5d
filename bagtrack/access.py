"""Who may see what: role checks and dispatch-area scoping, in one place.

A dispatcher sees only the bags and scans of their own area; anything
outside it answers exactly as if it did not exist (404).
"""

from __future__ import annotations

from functools import wraps

from flask import abort
from flask_login import current_user, login_required

from .models import User


def area_scope(user: User) -> int | None:
    """The one area ``user`` is confined to, or ``None`` for all areas."""
    if user.has_role("biller"):
        return None
    return user.area_id


def may_see_area(user: User, area_id: int | None) -> bool:
    scope = area_scope(user)
    return scope is None or scope == area_id


def visible_figures(user: User, figures: dict) -> dict:
    """Dashboard figures as ``user`` may see them: bills are the office's, a dispatcher's figures leave them out."""
    if user.has_role("biller"):
        return figures
    return {name: value for name, value in figures.items() if name != "bills"}


def scoped(statement, user: User, area_column):
    """Restrict a SELECT to the areas ``user`` may see."""
    scope = area_scope(user)
    if scope is None:
        return statement
    return statement.where(area_column == scope)


def role_required(role: str):
    """Log in first; then refuse with 403 unless the user holds ``role`` (or above)."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapped(*args, **kwargs):
            if not current_user.has_role(role):
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator
