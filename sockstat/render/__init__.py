"""Renderers: model objects -> text for people (plain, rich) and machines (JSON, CSV,
Prometheus). They read the model; they never collect."""
