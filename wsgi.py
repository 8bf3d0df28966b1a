"""WSGI entry point: `gunicorn -k gevent wsgi:app`. Entry points load `.env`; the app does not."""
from dotenv import load_dotenv

from app import create_app

load_dotenv()
app = create_app()
