"""The admin page at /admin: watch, add and retire Q accounts from a browser (ADMIN_KEY opens it)."""
