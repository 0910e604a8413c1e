"""The search service: FastAPI app + offline web page over a loaded retrieval engine."""

from fgia.serve.app import create_app
from fgia.serve.config import ServeConfig
from fgia.serve.server import run

__all__ = ["ServeConfig", "create_app", "run"]
