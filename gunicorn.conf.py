"""gunicorn settings for bagtrack: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Every value can be changed by environment variable; command-line options
(``-b``, ``-w``, ...) override this file as usual.
"""

import gc
import os
import shutil
import tempfile


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


# gevent: a worker serves many requests at once while they wait on PostgreSQL
# and Redis (psycopg2 is made cooperative in post_fork). Two workers on two
# cores measured best; more workers than cores only add context switches.
worker_class = "gevent"
# The cores this process may run on (a container's CPU set, not the host's count).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
workers = _env_int("GUNICORN_WORKERS", CORES)

# Bound the requests a worker runs at once to about what its database pool
# can serve (pool size + overflow + a few for requests that need no
# connection). Throughput peaks near ten requests in flight; beyond that
# gevent only adds queueing, and it queues unfairly (p99 5-10x p50), while
# connections waiting in the listen backlog are taken in arrival order by
# whichever worker has room. A burst therefore waits in the backlog, and at
# most a few requests per worker wait (briefly) for a pool connection.
worker_connections = _env_int(
    "GUNICORN_WORKER_CONNECTIONS",
    _env_int("BAGTRACK_DB_POOL_SIZE", 10) + _env_int("BAGTRACK_DB_MAX_OVERFLOW", 2) + 4,
)
# An idle keep-alive connection holds one of those few slots until it times
# out, so with more clients than slots the rest would wait for an idle one to
# go away. Connections therefore close after each response by default (behind
# nginx, whose upstream connections are not kept alive unless configured,
# this changes nothing). Raise it only with worker_connections well above the
# number of clients.
keepalive = _env_int("GUNICORN_KEEPALIVE", 0)

bind = [os.environ.get("BAGTRACK_BIND") or f"127.0.0.1:{os.environ.get('PORT', '8000')}"]
backlog = _env_int("GUNICORN_BACKLOG", 2048)

# A worker that misses its heartbeat this long is killed and replaced.
timeout = _env_int("GUNICORN_TIMEOUT", 30)
# On SIGTERM, requests in flight get this long to finish.
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 20)
# A safety net against slow memory growth, spread so workers do not restart
# together; high enough not to restart a worker every few minutes at full load
# (a fresh worker pays its imports and a cold pool).
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 500_000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 50_000)

# The heartbeat file is touched constantly; keep it off disk.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Workers import the app after the fork: nothing (no connection, no metric
# file) is shared between them by accident.
preload_app = False

# The app writes one JSON line per request to stderr; gunicorn's access log is
# off unless GUNICORN_ACCESS_LOG names a file (or "-"), and then carries the
# request id the app puts in the response.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
proc_name = "bagtrack"

# gunicorn's control socket has one default path per user, so two servers on
# one host (a deploy and a benchmark, say) would take it from each other. It
# is off unless GUNICORN_CONTROL_SOCKET gives this server a path of its own.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# A metrics directory this file creates (on_exit removes only such a one).
METRICS_DIR_PREFIX = "bagtrack-metrics-"


def on_starting(server):
    """Give the workers one fresh directory for their Prometheus samples.

    The variable must be in the environment before a worker imports
    prometheus_client (it picks multiprocess mode at import), so it is set here
    in the master, which never imports the app or prometheus_client.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        # Samples of a previous run would be added to this one's.
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".db"):
                os.remove(os.path.join(directory, name))
    else:
        directory = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    server.log.info("Prometheus multiprocess directory: %s", directory)


def post_fork(server, worker):
    """Make psycopg2 cooperative under gevent, before the worker loads the app.

    Without it one query blocks every greenlet in the worker. Patching twice is
    harmless; wsgi.py patches too, for servers that do not read this file.
    """
    from gunicorn.workers.ggevent import GeventWorker

    if isinstance(worker, GeventWorker):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def post_worker_init(worker):
    """The app is loaded: keep its long-lived objects out of every later garbage collection.

    A collection stalls every greenlet of the worker while it runs. Frozen
    startup objects (modules, the app, mapped classes, compiled statements)
    are no longer walked by full collections. The young generation keeps
    Python's default size: collections are frequent but each takes about a
    millisecond. A first generation of 50,000 objects made them rare and each
    one 20-90 ms long, a stall that landed on whichever requests were in
    flight, and cost more collection time in all.
    """
    gc.freeze()


def child_exit(server, worker):
    """Drop a dead worker's live gauges (pool usage) from the totals."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory on_starting made; one the operator named stays.

    Told apart by its name rather than a variable here: a reload (SIGHUP)
    reads this file again and would forget such a variable.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    name = os.path.basename(directory)
    if os.path.dirname(directory) == tempfile.gettempdir() and name.startswith(METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
