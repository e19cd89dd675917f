"""HTTP API: the app factory lives in `service.api.app`."""
