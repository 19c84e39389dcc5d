"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``.

bagtrack is served by gevent, so this module makes the standard library and
psycopg2 cooperative before the app is imported. gunicorn's gevent worker has
already patched the standard library by the time it imports this module, and
post_fork has patched psycopg2; both steps are skipped or repeated harmlessly
then. ``flask --app bagtrack`` imports the package directly and patches nothing.
"""

from gevent import monkey

if not monkey.is_module_patched("socket"):
    monkey.patch_all()

from psycogreen.gevent import patch_psycopg

patch_psycopg()

from bagtrack import create_app  # noqa: E402 (after monkey-patching, on purpose)

app = create_app()
