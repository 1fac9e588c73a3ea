"""Chinese transcripts in one script: Simplified by default, Traditional on request.

Whisper writes Mandarin in a mix of scripts, Traditional characters often (廣州市…協會 for
Simplified speech); OpenCC (PyPI `opencc`, the project's own Python binding) converts with
its phrase tables, so context-dependent characters come out right (頭髮 / 头发, 乾燥 / 干燥).
Measured on the real Mandarin clip: CER 50 % as whisper wrote it, 17 % after `t2s`; an
initial prompt in Simplified helped less (25 %; 17 % with `t2s` too) and can drop speech
on longer audio (docs/PERFORMANCE.md, section 7), so none is used.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from webapp.config import CHINESE_SCRIPTS as SCRIPTS
from webapp.services.transcription import Segment, Transcript, Word

DEFAULT_SCRIPT = "simplified"
# OpenCC's configurations: Traditional -> Simplified, and Simplified -> Traditional
# (OpenCC's standard Traditional characters; characters already in the target script stay).
_CONFIGS = {"simplified": "t2s", "traditional": "s2t"}
LANGUAGES = frozenset({"zh"})  # transcripts converted (Cantonese is written its own way)


@functools.lru_cache(maxsize=2)
def _converter(script: str):
    import opencc  # a C extension with its dictionaries; loaded on first use

    return opencc.OpenCC(_CONFIGS[script])


def simplified_char(ch: str) -> str:
    """One Chinese character in Simplified (itself when OpenCC has no single one for it):
    what search compares, so that either script finds the other."""
    converted = _converter("simplified").convert(ch)
    return converted if len(converted) == 1 else ch


def convert_text(text: str, script: str = DEFAULT_SCRIPT) -> str:
    return _converter(script).convert(text) if text else text


def to_script(transcript: Transcript, script: str = DEFAULT_SCRIPT) -> Transcript:
    """The transcript with its Chinese text in `script`; other languages as they are."""
    if script not in _CONFIGS:
        raise ValueError(f"CHINESE_SCRIPT must be one of {', '.join(SCRIPTS)}, got {script!r}")
    if transcript.language not in LANGUAGES:
        return transcript
    return replace(transcript, segments=[_segment(s, script) for s in transcript.segments])


def _segment(segment: Segment, script: str) -> Segment:
    return replace(segment, text=convert_text(segment.text, script),
                   words=_words(segment.words, script))


def _words(words: tuple[Word, ...], script: str) -> tuple[Word, ...]:
    """The words converted together, so that phrases spanning several of them convert as
    phrases; word by word if the conversion changed the text's length (it maps characters
    one to one in practice, but nothing promises it)."""
    joined = "".join(w.text for w in words)
    converted = convert_text(joined, script)
    if len(converted) != len(joined):
        return tuple(replace(w, text=convert_text(w.text, script)) for w in words)
    out, at = [], 0
    for w in words:
        out.append(replace(w, text=converted[at:at + len(w.text)]))
        at += len(w.text)
    return tuple(out)
