"""HTTP route handlers; ``app.web.create_app`` is the one place that lists them."""
