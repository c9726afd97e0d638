"""Mounting `POST /imagereward/v1/score` on the WebUI's FastAPI app, with the WebUI's API rules.

This module deliberately has no `from __future__ import annotations`: FastAPI reads the annotations of the route and
of its dependencies at mount time and resolves string annotations in the function's module globals. A class
imported inside a function is not there, so with postponed annotations the route failed to mount in A1111 1.10.1's
FastAPI whenever `--api-auth` was given (`NameError: name 'HTTPBasicCredentials' is not defined`), and the route
answered 404 to everyone. Here every annotation is a real object, whatever FastAPI version the host has.
"""

import logging
from collections.abc import Callable
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.concurrency import run_in_threadpool

from .access import allowed
from .api import ROUTE, ApiError, read_json_body, score_request

log = logging.getLogger("imagereward")


def auth_dependency(credentials: dict) -> Callable[..., None]:
    """The `--api-auth` check as a FastAPI dependency: 401 unless the basic-auth user and password match."""
    basic = HTTPBasic()

    def authenticate(given: HTTPBasicCredentials = Depends(basic)) -> None:  # noqa: B008
        if not allowed(credentials, given.username, given.password):
            raise HTTPException(status_code=401, detail="Incorrect username or password")

    return authenticate


def mount_score_route(app: Any, score: Callable[..., Any], credentials: dict) -> None:
    """Add the route to `app`; `credentials` (user -> password, empty: no auth) as parsed from `--api-auth`."""

    async def score_endpoint(request: Request) -> dict:
        # The body is read with its size limit (a parsed `dict` parameter would be read whole first); decoding and
        # scoring run in a worker thread, off the server's event loop.
        try:
            payload = await read_json_body(request)
            return await run_in_threadpool(score_request, payload, score)
        except ApiError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except Exception as exc:
            log.error("ImageReward: score request failed: %s", exc)
            raise HTTPException(status_code=503, detail=f"ImageReward could not score: {exc}") from None

    dependencies = [Depends(auth_dependency(credentials))] if credentials else []
    app.add_api_route(ROUTE, score_endpoint, methods=["POST"], tags=["ImageReward"], dependencies=dependencies)
