# bench/stream_floor.py's minimal relay: the settings of amq's gunicorn.conf.py that matter here.
from gevent import monkey

monkey.patch_all()
worker_class = "gevent"
worker_connections = 1000
keepalive = 5
loglevel = "warning"
