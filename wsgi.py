"""WSGI entry point: `gunicorn -k gevent wsgi:app`. Entry points load `.env`; the app does not.

Importing this module never refuses for want of a login: gunicorn's master already refused
to start without one (gunicorn.conf.py, on_starting), in one line, before any worker imports
it. A tool that only imports the app gets it, and an app served without a login answers
each request with a 401 that says how to add one.
"""
from dotenv import load_dotenv

from app import create_app

load_dotenv()
app = create_app(require_credentials=False)
