"""Reads finished outputs back for display: transcript lines and storyboard tiles."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import webvtt

from webapp.services.storage import ArtifactFile

log = logging.getLogger(__name__)
_XYWH = re.compile(r"#xywh=(\d+),(\d+),(\d+),(\d+)$")


@dataclass(frozen=True)
class Line:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Tile:
    start: float
    end: float
    x: int
    y: int
    w: int
    h: int


def _seconds(timestamp: str) -> float:
    # webvtt-py's *_in_seconds drop the milliseconds; players seek to the millisecond.
    hours, minutes, seconds = (["0"] + timestamp.split(":"))[-3:]
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass(frozen=True)
class TranscriptView:
    lines: list[Line]
    language: str | None  # ISO 639-1
    language_probability: float | None
    translation_note: str | None  # why there is no translation although one was asked for
    translation: list[Line] = field(default_factory=list)  # the English translation's lines


def _lines(segments: list[dict]) -> list[Line]:
    return [Line(float(s["start"]), float(s["end"]), str(s["text"])) for s in segments]


def transcript(found: ArtifactFile | None, video_id: str) -> TranscriptView | None:
    """The published transcript's timed lines, language and English translation (if one
    was made), None without a readable one."""
    if found is None:
        return None
    try:
        data = json.loads(found.path.read_text(encoding="utf-8"))
        probability = data.get("language_probability")
        return TranscriptView(_lines(data["segments"]), data.get("language") or None,
                              None if probability is None else float(probability),
                              data.get("translation_note"),
                              _lines((data.get("translation") or {}).get("segments") or []))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable transcript of video %s: %s", video_id, exc)
        return None


def transcript_text(found: ArtifactFile | None, video_id: str) -> str | None:
    """The published transcript as plain text, one segment a line; None without one."""
    view = transcript(found, video_id)
    if view is None:
        return None
    return "".join(f"{' '.join(line.text.split())}\n" for line in view.lines)


def storyboard_tiles(artifacts: dict[str, ArtifactFile],
                     video_id: str) -> tuple[list[Tile], int, int]:
    """Tiles of the published storyboard sprite with the sprite's width and height (0, 0 if
    none); `artifacts` are the video's published outputs by name."""
    index = artifacts.get("storyboard.vtt")
    if index is None or "storyboard.jpg" not in artifacts:
        return [], 0, 0
    try:
        cues = webvtt.read(str(index.path))
    except Exception as exc:  # webvtt-py raises its own and OSError
        log.warning("unreadable storyboard index of video %s: %s", video_id, exc)
        return [], 0, 0
    tiles = []
    for cue in cues:
        match = _XYWH.search(cue.text.strip())
        if match:
            x, y, w, h = (int(v) for v in match.groups())
            tiles.append(Tile(_seconds(cue.start), _seconds(cue.end), x, y, w, h))
    width = max((t.x + t.w for t in tiles), default=0)
    height = max((t.y + t.h for t in tiles), default=0)
    return tiles, width, height
