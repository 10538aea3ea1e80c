"""The HTTP front: an OpenAI-compatible API over the pipeline, plus admin and health routes."""

from veil.api.app import create_app

__all__ = ["create_app"]
