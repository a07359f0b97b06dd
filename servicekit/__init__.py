"""Plumbing shared by the dialogs service and the gateway: config parsing, request ids,
JSON logs, error bodies and Prometheus metrics."""
