"""The credential side: login records, their stores (file, Redis), the OIDC client, the login
flows and the token manager. Nothing here imports the request path."""
