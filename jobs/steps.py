"""One RQ job function per processing step; each takes only the task id."""

from __future__ import annotations

import logging

from rq import get_current_job

from jobs.runner import StepContext, StepResult, run_step
from webapp.services import captions, chinese, transcription, workers
from webapp.services.ffrun import damage_note
from webapp.services.media import audio
from webapp.services.media.preview import transcode_preview
from webapp.services.media.thumbnails import make_poster, make_storyboard

log = logging.getLogger(__name__)


# A damaged source decoded through (ffrun.run) completes each step with a note saying so.


def _extract_audio(ctx: StepContext) -> StepResult:
    return StepResult(note=audio.extract_audio(
        ctx.source, ctx.artifacts / "audio.wav", ctx.duration, ctx.on_progress,
        format_name=ctx.format_name))


def _transcribe(ctx: StepContext) -> StepResult:
    wav = ctx.inputs.get("audio.wav")
    if wav is None:
        raise transcription.TranscriptionError(
            "there is no extracted audio to transcribe; run the whole pipeline again")
    job = get_current_job()
    threads = workers.transcription_threads(ctx.settings.whisper_threads,
                                            job.connection if job else None,
                                            ctx.settings.queue_name)
    log.info("transcribe: whisper %s with %d thread(s)", ctx.settings.whisper_model, threads)
    result = transcription.transcribe(wav, ctx.settings.whisper_model, ctx.on_progress,
                                      cpu_threads=threads,
                                      language=ctx.language, translate=ctx.translate,
                                      stop=ctx.stop, on_guess=ctx.on_guess)
    result = chinese.to_script(result, ctx.settings.chinese_script)
    transcription.write_json(result, ctx.artifacts / "transcript.json")
    # Captions in cues that fit the script, cut from the timed words.
    cues = captions.cued(result)
    transcription.write_vtt(cues, ctx.artifacts / "captions.vtt")
    transcription.write_srt(cues, ctx.artifacts / "captions.srt")
    if result.translation is not None:
        english = captions.cued(result.translation)
        transcription.write_vtt(english, ctx.artifacts / "captions.en.vtt")
        transcription.write_srt(english, ctx.artifacts / "captions.en.srt")
    return StepResult(note=result.translation_note, video={
        "language": result.language, "language_probability": result.language_probability,
        "transcript_model": ctx.settings.whisper_model,
        "transcript_script": (ctx.settings.chinese_script
                              if result.language in chinese.LANGUAGES else None)},
        segments=tuple((s.start, s.end, s.text) for s in result.segments),
        translation=tuple((s.start, s.end, s.text) for s in result.translation.segments)
        if result.translation is not None else ())


# The poster's share of the thumbnails step: 0.23-0.51 of its time on 10-120 s 720p
# videos (measured), so the step's progress does not crawl for its first half.
POSTER_SHARE = 0.35


def _thumbnails(ctx: StepContext) -> StepResult:
    make_poster(ctx.source, ctx.artifacts / "poster.jpg", ctx.duration,
                format_name=ctx.format_name)
    ctx.on_progress(POSTER_SHARE)
    board = make_storyboard(
        ctx.source, ctx.artifacts / "storyboard.jpg", ctx.artifacts / "storyboard.vtt",
        ctx.duration or 0.0, ctx.width or 0, ctx.height or 0,
        on_progress=lambda f: ctx.on_progress(POSTER_SHARE + (1 - POSTER_SHARE) * f),
        format_name=ctx.format_name,
    )
    return StepResult(note=damage_note(board.damaged))


def _transcode(ctx: StepContext) -> StepResult:
    return StepResult(note=transcode_preview(
        ctx.source, ctx.artifacts / "preview.mp4", ctx.duration, ctx.on_progress,
        has_audio=ctx.has_audio, threads=ctx.settings.ffmpeg_threads,
        format_name=ctx.format_name, nice=ctx.settings.transcode_nice))


def extract_audio(task_id: str) -> str:
    """16 kHz mono WAV of the source's audio."""
    return run_step(task_id, "extract_audio", _extract_audio)


def transcribe(task_id: str) -> str:
    """Transcript JSON plus VTT/SRT captions from the extracted audio."""
    return run_step(task_id, "transcribe", _transcribe)


def thumbnails(task_id: str) -> str:
    """Poster frame and storyboard sprite with its VTT index."""
    return run_step(task_id, "thumbnails", _thumbnails)


def transcode(task_id: str) -> str:
    """Small H.264/AAC MP4 preview with faststart."""
    return run_step(task_id, "transcode", _transcode)
