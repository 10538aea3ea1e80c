"""Routing: which model, tier and provider serve a request."""

from veil.routing.router import Deployment, ModelEntry, Route, Router

__all__ = ["Deployment", "ModelEntry", "Route", "Router"]
