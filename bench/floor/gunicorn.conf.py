# bench/stream_floor.py's design-card stand-in: amq's gunicorn.conf.py settings for the worker
# and its connections. Not amq's collector settings (amq/collector.py, post_worker_init): this
# worker keeps CPython's, as the plain design card would.
from gevent import monkey

monkey.patch_all()
worker_class = "gevent"
worker_connections = 1000
keepalive = 5
loglevel = "warning"
