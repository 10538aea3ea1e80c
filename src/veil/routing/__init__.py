"""Routing: which model, tier and provider serve a request."""

from veil.routing.preferences import PreferenceStore
from veil.routing.router import Candidate, Deployment, ModelEntry, Plan, Route, Router

__all__ = ["Candidate", "Deployment", "ModelEntry", "Plan", "PreferenceStore", "Route", "Router"]
