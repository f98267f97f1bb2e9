"""The web labeler's HTTP API and page (FastAPI), served by uvicorn.

Endpoints (JSON; every body is validated, every answer committed before the response):

- ``GET /``: the page. ``GET /api/info``: the task text.
- ``POST /api/next`` ``{session}``: the question leased to this browser session (2 segments for a pair,
  k for best-of-k), with a clip URL per segment, or its text for text segments.
- ``POST /api/answer`` ``{answer_id, query_id, label, labeler, session}``: ``label`` is the index of
  the best segment, -1 equally good, -2 can't tell. A repeated ``answer_id`` is stored once.
- ``POST /api/undo`` ``{session}``: take back this session's last answer; returns its question.
- ``GET /api/progress?session=``: counts. ``GET /clips/{segment_id}.mp4``: a clip, by id only.

On any address but loopback an access token is required: ``?token=`` on the page and clip URLs, the
``X-Token`` header on API calls.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi import Query as QueryParam
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from prefrl.clips import ClipCache, ClipError
from prefrl.labeler.store import Conflict, LabelQueue, OpenQuery

STATIC = Path(__file__).parent / "static"
ID = r"^[A-Za-z0-9_-]{8,64}$"
NAME = r"^[\w .@'-]{1,64}$"
PREFETCH = 10
"""Questions whose clips are rendered ahead of time, as soon as they are queued."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionIn(Strict):
    session: str = Field(pattern=ID)


class AnswerIn(Strict):
    answer_id: str = Field(pattern=ID)
    query_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    label: int = Field(ge=-2, le=15)
    labeler: str = Field(pattern=NAME)
    session: str = Field(pattern=ID)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def create_app(
    queue: LabelQueue,
    clips: ClipCache | None,
    *,
    task: str = "",
    token: str | None = None,
    prefetch: int = PREFETCH,
) -> FastAPI:
    """The labeler app over ``queue``; ``clips`` renders clips (None: clips are not served); with ``token``
    every request must carry it. ``app.state.render_ahead()`` starts rendering the clips of the next
    ``prefetch`` open questions (call it whenever questions may have been queued)."""
    app = FastAPI(title="prefrl labeler", docs_url=None, redoc_url=None)
    page = (STATIC / "index.html").read_text()

    def authorized(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("x-token") or request.query_params.get("token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong access token; use the URL the server printed")

    auth = [Depends(authorized)]

    @functools.lru_cache(maxsize=4096)
    def text_of(segment_id: int) -> str | None:  # segments never change once stored
        try:
            return queue.segment(segment_id).text
        except KeyError:
            return None

    def as_json(q: OpenQuery | None) -> dict | None:
        """A question for the page: per segment, a clip URL, or its text (text segments are shown, not played)."""
        if q is None:
            return None
        texts = [text_of(i) for i in q.segment_ids]
        return {
            "id": q.id,
            "segments": list(q.segment_ids),
            "clips": [None if t is not None else f"/clips/{i}.mp4" for i, t in zip(q.segment_ids, texts, strict=True)],
            "texts": texts,
        }

    def render_ahead(current: OpenQuery | None = None) -> None:
        """``current`` (about to be watched) first, then the oldest open questions: the order labelers see them."""
        if clips is None:
            return
        if current is not None:
            clips.prefetch((i for i in current.segment_ids if text_of(i) is None), urgent=True)
        upcoming = [q for q in queue.upcoming(prefetch + 1) if current is None or q.id != current.id]
        clips.prefetch(i for q in upcoming[:prefetch] for i in q.segment_ids if text_of(i) is None)

    app.state.render_ahead = render_ahead

    @app.get("/", response_class=HTMLResponse, dependencies=auth)
    def index() -> str:
        return page

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/api/info", dependencies=auth)
    def info() -> dict:
        return {"task": task, "lease_s": queue.lease_s, "clips": clips is not None}

    @app.post("/api/next", dependencies=auth)
    def next_query(body: SessionIn) -> dict:
        q = queue.lease_next(body.session)
        render_ahead(q)
        return {"query": as_json(q), "progress": queue.progress(body.session)}

    @app.post("/api/answer", dependencies=auth)
    def answer(body: AnswerIn) -> dict:
        try:
            stored = queue.answer(
                answer_id=body.answer_id,
                query_id=body.query_id,
                label=body.label,
                labeler=body.labeler.strip(),
                session=body.session,
            )
        except Conflict as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        return {"stored": stored, "progress": queue.progress(body.session)}

    @app.post("/api/undo", dependencies=auth)
    def undo(body: SessionIn) -> dict:
        q = queue.undo(body.session)
        return {"query": as_json(q), "progress": queue.progress(body.session)}

    @app.get("/api/progress", dependencies=auth)
    def progress(session: Annotated[str, QueryParam(pattern=ID)]) -> dict:
        return queue.progress(session)

    @app.get("/clips/{segment_id}.mp4", dependencies=auth)
    def clip(segment_id: Annotated[int, PathParam(ge=0, lt=2**62)]) -> FileResponse:
        if clips is None:
            raise HTTPException(status_code=404, detail="this labeler serves no clips")
        if not queue.has_segment(segment_id):
            raise HTTPException(status_code=404, detail=f"no segment {segment_id}")
        try:
            path = clips.get(segment_id)
        except ClipError as e:
            raise HTTPException(status_code=422, detail=str(e)) from None
        return FileResponse(path, media_type="video/mp4", headers={"Cache-Control": "private, max-age=3600"})

    return app
