"""Caption cues cut from a transcript's timed words, in lines that fit the script.

Whisper's segments are as long as a sentence or two (up to its 30 s window): shown as they
are, a cue of Chinese would be a block of 60 characters. Cues here hold at most LINES lines
of at most 20 characters for Chinese, Japanese and Korean (no spaces to break at: any
character boundary will do, punctuation preferred) and 42 for other scripts (broken at
spaces), the usual limits of subtitle style guides. A cue starts with its first word and
ends with its last (whisper's word timestamps); a new one starts at every segment, after a
pause, after MAX_CUE_SECONDS, and at the end of a sentence (not at the stop of a title or
an initial, see TITLES; a short one may share a cue with the one before); a sentence too
long for one cue is cut into cues of equal length.
Transcripts without word timestamps (made before they were recorded) get their words'
times interpolated over each segment, by characters.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace

from webapp.services.transcription import Segment, Transcript, Word

WIDE_LINE = 20  # characters a line: Chinese, Japanese, Korean
LINE = 42  # characters a line: every other script
LINES = 2
MAX_CUE_SECONDS = 7.0
PAUSE = 1.2  # seconds of silence between two words that end a cue
MIN_CUE_SECONDS = 0.5  # a cue whose words whisper timed shorter lasts this, where it can
WIDE = frozenset({"zh", "ja", "ko", "yue"})
# Other languages whose script puts no spaces between words (Thai, Lao, Burmese, Khmer,
# Tibetan): their lines break between whisper's words, as in WIDE ones.
UNSPACED = frozenset({"th", "lo", "my", "km", "bo"})
SENTENCE_END = tuple("。！？!?…") + (".",)
CLAUSE_END = tuple("，、；：,;:")
# Words whose full stop ends no sentence: titles before a name (English, German, French,
# Spanish; compared case-folded, without the stop). Initials (J. R. R.) and abbreviations
# with inner stops (e.g., i.e., z.B.) end none either, nor does a stop before a word that
# starts in lower case.
TITLES = frozenset({"mr", "mrs", "ms", "mx", "dr", "prof", "rev", "fr", "st", "mt", "gen",
                    "col", "capt", "lt", "sgt", "gov", "sen", "rep", "pres", "hon", "hr",
                    "mme", "mlle", "sr", "sra", "srta", "dra", "nr", "vs"})


def line_limit(language: str | None) -> int:
    return WIDE_LINE if language in WIDE else LINE


def cued(transcript: Transcript) -> Transcript:
    """The transcript with its segments cut into caption cues (text lines joined by "\\n");
    what the WebVTT and SRT writers take."""
    return replace(transcript, segments=cues(transcript), translation=None)


def cues(transcript: Transcript) -> list[Segment]:
    limit = line_limit(transcript.language)
    split_words = transcript.language in WIDE
    spaced = not split_words and transcript.language not in UNSPACED
    groups = [group for segment in transcript.segments
              for group in _groups(_tokens(segment, split_words, limit, spaced), limit)]
    out: list[Segment] = []
    for i, group in enumerate(groups):
        before = out[-1].end if out else 0.0
        start = round(max(group[0].start, before), 3)
        end = round(max(start, group[-1].end), 3)
        if end - start < MIN_CUE_SECONDS:
            # Words whisper gave no time (or that the end of the audio cut to none): shown
            # for a moment all the same, after them up to the next cue's first word (or the
            # end of the audio), and before them back to the previous cue.
            after = (groups[i + 1][0].start if i + 1 < len(groups)
                     else transcript.duration if transcript.duration > 0
                     else end + MIN_CUE_SECONDS)
            end = round(max(end, min(start + MIN_CUE_SECONDS, after)), 3)
            start = round(max(before, min(start, end - MIN_CUE_SECONDS)), 3)
        out.append(Segment(start, end, "\n".join(_layout(group, limit))))
    return out


@dataclass(frozen=True)
class _Token:
    start: float
    end: float
    text: str  # with its leading space where the script has one


def _tokens(segment: Segment, split_words: bool, limit: int,
            spaced: bool = False) -> list[_Token]:
    """The segment's words as tokens a line or a cue may break between. In a script written
    with spaces (`spaced`), a word whisper started at an apostrophe or a hyphen without a
    space (" qu" "'il", " Est" "-ce", " T" "-Rex") is joined to the word before it."""
    words = segment.words or _interpolated(segment, split_words)
    tokens: list[_Token] = []
    for w in words:
        if split_words and len(w.text.strip()) > limit:
            tokens.extend(_spread(w.start, w.end, _characters(w.text)))  # a very long "word"
        elif spaced and tokens and w.text.strip() and not w.text[:1].isspace():
            last = tokens[-1]
            tokens[-1] = _Token(last.start, max(last.end, w.end), last.text + w.text)
        elif w.text.strip():
            tokens.append(_Token(w.start, w.end, w.text))
    return tokens


def _interpolated(segment: Segment, split_words: bool) -> tuple[Word, ...]:
    """Words of a segment without timestamps, timed in proportion to their length."""
    text = segment.text
    pieces = _characters(text) if split_words else [f" {w}" for w in text.split()]
    return tuple(Word(t.start, t.end, t.text)
                 for t in _spread(segment.start, segment.end, pieces))


def _characters(text: str) -> list[str]:
    """The text's characters, each with the combining marks that follow it (a line break
    must not separate a mark or a joiner from its base)."""
    out: list[str] = []
    for ch in text:
        if out and (unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Mc", "Me")
                    or ch in "\u200d\ufe0f" or out[-1].endswith("\u200d")):
            out[-1] += ch
        else:
            out.append(ch)
    return out


def _spread(start: float, end: float, pieces: list[str]) -> list[_Token]:
    total = sum(len(p) for p in pieces) or 1
    tokens, at = [], start
    for piece in pieces:
        step = (end - start) * len(piece) / total
        tokens.append(_Token(round(at, 3), round(at + step, 3), piece))
        at += step
    return tokens


def _text(tokens: list[_Token]) -> str:
    return "".join(t.text for t in tokens).strip()


def _layout(tokens: list[_Token], limit: int) -> list[str]:
    """The tokens as one line, or as two lines split where the longer line is shortest
    (a split after punctuation counts as 4 characters shorter, one between a title and a
    name, "Mr." and "Smith", as 4 longer); a single token longer than
    the limit (a URL, say) stays whole on its line."""
    whole = _text(tokens)
    if len(whole) <= limit or len(tokens) == 1:
        return [whole]
    best: tuple[float, list[str]] | None = None
    for i in range(1, len(tokens)):
        first, second = _text(tokens[:i]), _text(tokens[i:])
        longest = max(len(first), len(second))
        if longest > limit and best is not None:
            continue
        after_stop = first.endswith(CLAUSE_END) or _ends_sentence(tokens[i - 1], tokens[i])
        title = not after_stop and first.endswith(".")  # "Mrs." above, the name below
        cost = longest - (4 if after_stop else 0) + (4 if title else 0)
        cost += 1000 * max(0, longest - limit)  # only when nothing fits
        if best is None or cost < best[0]:
            best = (cost, [first, second])
    return best[1] if best else [whole]


def _fits(tokens: list[_Token], limit: int) -> bool:
    length = len(_text(tokens))
    if length <= limit:
        return True
    if length > LINES * limit + 1:  # + 1: the space a line break replaces
        return False
    lines = _layout(tokens, limit)
    return len(lines) <= LINES and all(len(line) <= limit for line in lines)


def _runs(tokens: list[_Token]) -> list[list[_Token]]:
    """Tokens split where a cue must end: at pauses and at the end of sentences."""
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    for i, token in enumerate(tokens):
        if current and token.start - current[-1].end >= PAUSE:
            runs.append(current)
            current = []
        current.append(token)
        if _ends_sentence(token, tokens[i + 1] if i + 1 < len(tokens) else None):
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _ends_sentence(token: _Token, following: _Token | None) -> bool:
    text = token.text.strip()
    if not text.endswith(SENTENCE_END):
        return False
    if not text.endswith(".") or text.endswith(".."):
        return True
    word = text[:-1].lstrip("\"'([«„“‘¿¡")
    if word.casefold() in TITLES or (len(word) == 1 and word.isupper()):
        return False  # Mr. Smith, J. Smith (not 好. of a Chinese sentence)
    if ("." in word and word.lower() != word.upper()
            and all(part.isalpha() and len(part) <= 2 for part in word.split("."))):
        return False  # e.g., i.e., z.B.
    # "approx. five": a sentence starts in upper case where the script has cases.
    first = following.text.lstrip()[:1] if following is not None else ""
    return not first.islower()


def _groups(tokens: list[_Token], limit: int) -> list[list[_Token]]:
    """Consecutive tokens grouped into cues: each run between pauses and sentence ends is
    cut into as few cues as fit, of about equal length (a long sentence in two cues is two
    halves, not a full cue and a scrap), none longer than MAX_CUE_SECONDS. A short sentence
    shares the cue of the sentence before when both fit in it."""
    groups: list[list[_Token]] = []
    for run in _runs(tokens):
        total = len(_text(run))
        count = max(1, -(-total // (LINES * limit)))
        target = total / count
        current: list[_Token] = []
        if groups and _joinable(groups[-1], run, limit):
            current = groups.pop()
            target = LINES * limit
        for token in run:
            if current and (token.end - current[0].start > MAX_CUE_SECONDS
                            or not _fits([*current, token], limit)
                            or len(_text([*current, token])) > target * 1.15 + 2):
                groups.append(current)
                current = []
            current.append(token)
        if current:
            groups.append(current)
    return groups


def _joinable(previous: list[_Token], run: list[_Token], limit: int) -> bool:
    """Whether a short run can share the previous cue: close in time, and together they fit
    (a sentence on a line of its own when they make two lines)."""
    return (run[0].start - previous[-1].end < PAUSE
            and run[-1].end - previous[0].start <= MAX_CUE_SECONDS
            and len(_text(previous)) <= limit and len(_text(run)) <= limit
            and _fits([*previous, *run], limit))
