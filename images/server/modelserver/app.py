"""The ASGI application: routes, error shapes, access control, service lifecycle."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from . import __version__, errors
from .api import openai as openai_api
from .api import ops, tgi
from .config import Settings
from .metrics import Metrics
from .security import AccessMiddleware, KeyFile
from .service import ModelService


def build_app(settings: Settings) -> Any:
    metrics = Metrics()
    service = ModelService(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        if app.state.cache is not None:
            await app.state.cache.connect()
        try:
            yield
        finally:
            service.stop()
            if app.state.overflow is not None:
                await app.state.overflow.close()

    app = FastAPI(title="modelserver", version=__version__, lifespan=lifespan,
                  description="OpenAI- and TGI-compatible inference server of modeldeploy")
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.cache = None
    app.state.overflow = None
    if settings.cache_redis_url:
        from .cache import ResponseCache

        app.state.cache = ResponseCache.from_settings(settings, metrics)
    if settings.overflow_url:
        from .overflow import Overflow

        app.state.overflow = Overflow.from_settings(settings, metrics)

    errors.install(app)

    app.include_router(ops.router)
    app.include_router(openai_api.router)
    app.include_router(tgi.router)

    keys = KeyFile(settings.api_keys_file) if settings.api_keys_file else None
    return AccessMiddleware(app, keys, settings.allow_cidr, settings.max_body_bytes,
                            settings.trusted_proxy_cidr), app
