"""The `language` option of uploads and triggers, checked against the configured model."""

from __future__ import annotations

from webapp.config import Settings
from webapp.models import Video
from webapp.services import whisper_models
from webapp.services.errors import InvalidArgument
from webapp.services.storage import TRANSLATED_CAPTIONS

AUTO = whisper_models.AUTO


class InvalidOption(InvalidArgument):
    """An option the service cannot honour (422), with a sentence saying what it can."""


def codes(settings: Settings) -> tuple[str, ...]:
    """The language codes the configured model transcribes."""
    return whisper_models.languages(whisper_models.model_dir(settings.whisper_model))


def choices(settings: Settings) -> list[tuple[str, str]]:
    """(code, name) of every language the model knows, by name: for the UI's menus."""
    return sorted(((c, whisper_models.language_name(c)) for c in codes(settings)),
                  key=lambda pair: pair[1])


def name(code: str | None) -> str:
    return whisper_models.language_name(code)


# The languages of whisper's that are written right to left (Arabic, Persian, Urdu, Pashto,
# Sindhi; Hebrew, Yiddish).
RIGHT_TO_LEFT = frozenset({"ar", "fa", "ur", "ps", "sd", "he", "yi"})


def direction(code: str | None) -> str:
    """HTML's `dir` for text in that language: "rtl", "ltr", or "auto" when it is unknown
    (the browser then takes it from the text's first letter)."""
    if not code:
        return "auto"
    return "rtl" if code in RIGHT_TO_LEFT else "ltr"


# Files whose text or speech is in the transcript's language.
_SPOKEN = ("transcript.json", "captions.vtt", "captions.srt", "audio.wav", "preview.mp4")


def of_artifact(name: str, video: Video) -> str | None:
    """The language of an artifact's text or speech: the published transcript's for the
    transcript, its captions, the audio and the preview (with sound); "en" for the
    translated captions; None for pictures and the storyboard index."""
    if name in TRANSLATED_CAPTIONS:
        return "en"
    if name in _SPOKEN and (name != "preview.mp4" or video.has_audio):
        return video.language
    return None


def parse(settings: Settings, value: str | None) -> str | None:
    """The code a `language` option asks for, None for auto-detection; InvalidOption (422)
    for a code the model does not know."""
    code = (value or AUTO).strip().lower()
    if code == AUTO:
        return None
    return check(settings, code)


def _label(settings: Settings) -> str:
    model = settings.whisper_model
    return model if model in whisper_models.CHOICES else "the WHISPER_MODEL folder's"


def check(settings: Settings, code: str | None) -> str | None:
    """`code` if the configured model transcribes it (None, auto, always does)."""
    if code is None:
        return None
    known = codes(settings)
    if code in known:
        return code
    if known == ("en",):
        raise InvalidOption(
            f"the speech model ({_label(settings)}) transcribes English only: "
            f"ask for language 'en' or 'auto', not {code[:20]!r}, or run the service with "
            "WHISPER_MODEL=base for other languages")
    raise InvalidOption(
        f"unknown language {code[:20]!r}: give 'auto' (detect it) or one of the codes the "
        f"{_label(settings)} model knows: {', '.join(sorted(known))}")


def check_stored(settings: Settings, code: str | None) -> str | None:
    """`check` for the language stored on a video (asked for at its upload or an earlier
    run), which the configured model may no longer know (another WHISPER_MODEL): the 422
    says it is the stored one and how to replace it, as the request did not name it."""
    try:
        return check(settings, code)
    except InvalidOption as error:
        raise InvalidOption(
            f"the language stored on this video, {code[:20]!r}, is not one the model knows: "
            f"give a language with the run to replace it ({error.message})") from None
