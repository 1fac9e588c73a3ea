"""One action on several videos (the library's selection): each video on its own, each
outcome reported, one video's refusal (409 while it runs, 404 once gone) stopping no other."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.config import Settings
from webapp.models import Video
from webapp.services import ingest, processing
from webapp.services.errors import ServiceError
from webapp.services.storage import Storage, is_valid_id

ACTIONS = ("delete", "reprocess")
_DONE = {"delete": "deleted with all its files", "reprocess": "reprocessing started"}
# The library says a refusal to a person: the service's 409 and 404 sentences are the API's
# (ids of the video and its task, which the library shows nowhere).
_REFUSED = {
    ("delete", 409): "not deleted: it is being processed; cancel its run (or wait for it "
                     "to end), then delete it",
    ("reprocess", 409): "not reprocessed: it is being processed already; wait for it to "
                        "end, or cancel it first",
    ("delete", 404): "not deleted: no such video (deleted meanwhile?)",
    ("reprocess", 404): "not reprocessed: no such video (deleted meanwhile?)",
}


@dataclass(frozen=True)
class Outcome:
    video_id: str
    name: str  # the video's file name, or its id once unknown
    status: int  # the HTTP status the same action on the API would answer: 204, 202, 409 ...
    message: str
    action: str = "delete"

    @property
    def ok(self) -> bool:
        return self.status < 400

    @property
    def sentence(self) -> str:
        """What became of the video, for a person: "bravo.mp4: not deleted: it is being
        processed; ..."; a refusal of another kind (the queue down) gives the service's."""
        if self.ok:
            return f"{self.name}: {self.message}"
        said = _REFUSED.get((self.action, self.status))
        return f"{self.name}: {said or 'not done: ' + self.message}"


def find(session: Session, ids: list[str]) -> list[Video]:
    """The videos among `ids` that exist, in the order given."""
    valid = [i for i in ids if is_valid_id(i)]
    found = {v.id: v for v in session.scalars(select(Video).where(Video.id.in_(valid)))}
    return [found[i] for i in ids if i in found]


def apply(session: Session, settings: Settings, storage: Storage, connection: Redis,
          action: str, ids: list[str]) -> list[Outcome]:
    """Delete or reprocess each video of `ids`; one Outcome per id, in order."""
    assert action in ACTIONS, action
    outcomes = []
    for video_id in ids:
        name = video_id
        try:
            name = processing.get_video(session, video_id).original_filename
            if action == "delete":
                ingest.delete_video(session, storage, video_id)
                status = 204
            else:
                processing.trigger(session, settings, storage, connection, video_id,
                                   "reprocess")
                status = 202
            outcomes.append(Outcome(video_id, name, status, _DONE[action], action))
        except ServiceError as exc:
            session.rollback()
            outcomes.append(Outcome(video_id, name, exc.status, exc.message, action))
    return outcomes
