"""The HTTP API (FastAPI): registry, latest values and time series. ``api.app.create_app`` builds it."""
