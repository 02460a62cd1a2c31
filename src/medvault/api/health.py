"""``GET /healthz``: healthy only when every enabled listener of the served home accepts connections.

A load balancer, or a modality's script that waits for the archive, must not be told "healthy" while
the DICOM TLS port still refuses: `serve` runs the DIMSE listener in a process of its own, which
binds its port a moment after the HTTPS workers answer. The supervisor and its forked workers share
one small anonymous memory mapping (:class:`Listeners`) in which each listener says whether it is
up; ``/healthz`` reads it and names each listener's state in the body.
"""

from __future__ import annotations

import mmap
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from medvault import __version__

__all__ = ["LISTENERS", "Health", "Listeners", "health_response", "router"]

#: The listeners a served home may run; HTTPS answers the request itself, so it is up when asked.
LISTENERS = ("https", "dimse")
State = Literal["up", "down", "off"]
_DOWN, _UP, _OFF = 0, 1, 2
_STATES: dict[int, State] = {_DOWN: "down", _UP: "up", _OFF: "off"}


class Health(BaseModel):
    """The body of /healthz: ``ok`` when every enabled listener is up, else ``unavailable``."""

    status: Literal["ok", "unavailable"]
    version: str
    listeners: dict[str, State]


class Listeners:
    """Up/down/off for each listener, in shared memory inherited across ``fork`` (one byte each):
    written by the process that runs a listener (and by the supervisor when that process dies),
    read by every HTTP worker."""

    def __init__(self) -> None:
        self._shared = mmap.mmap(-1, len(LISTENERS))  # anonymous and MAP_SHARED: survives fork
        for name in LISTENERS:
            self.set(name, "off")

    def set(self, name: str, state: State) -> None:
        code = {"down": _DOWN, "up": _UP, "off": _OFF}[state]
        self._shared[LISTENERS.index(name)] = code

    def states(self) -> dict[str, State]:
        return {name: _STATES.get(self._shared[i], "down") for i, name in enumerate(LISTENERS)}


def health_response(listeners: Listeners | None) -> JSONResponse:
    """200 when every enabled listener is up, 503 while one is starting or has stopped."""
    states: dict[str, State] = {"https": "up"}
    if listeners is not None:
        states |= {name: s for name, s in listeners.states().items() if name != "https"}
    healthy = all(s != "down" for s in states.values())
    body = Health(status="ok" if healthy else "unavailable", version=__version__, listeners=states)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


router = APIRouter()


@router.get(
    "/healthz",
    response_model=Health,
    openapi_extra={"security": []},
    responses={503: {"model": Health, "description": "An enabled listener is not accepting (yet)"}},
)
def healthz(request: Request) -> JSONResponse:
    """Public: whether every enabled listener (HTTPS, DICOM TLS) accepts connections."""
    return health_response(getattr(request.app.state, "listeners", None))
