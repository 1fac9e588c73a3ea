"""The audio step's ffmpeg run: the sound as the 16 kHz mono WAV that whisper reads."""

from __future__ import annotations

from pathlib import Path

from webapp.services.ffrun import (
    ProgressCallback,
    atomic_output,
    damage_note,
    failing_as,
    require_output,
    run,
)
from webapp.services.media.probe import first_streams
from webapp.services.mediainput import ffmpeg_input

# The least start of the sound after the file's start (seconds) that extract_audio keeps:
# a frame of audio (AAC's 1024 samples at 48 kHz: 21 ms) is nothing to a caption.
OFFSET_TO_KEEP = 0.025


# Sound frames a decoder skipped as damaged (ffrun.run decodes through them) leave gaps in
# the timestamps: without them filled, the WAV would be shorter by as much (23 ms per AAC
# frame) and every caption after the damage early by it. aresample fills a gap of more than
# 10 ms with silence (async=1 turns its timestamp-following on; min_hard_comp is the gap;
# nothing is stretched). A whole file's timestamps have no such gap.
ON_THE_CLOCK = {"async": 1, "min_hard_comp": 0.01}


def extract_audio(
    src: Path, dst: Path, duration: float | None, on_progress: ProgressCallback | None = None,
    *, format_name: str | None = None,
) -> str | None:
    """Write the audio stream (sound_stream) as 16 kHz mono 16-bit WAV, what whisper wants;
    return a note when damaged frames were skipped (damage_note), else None.

    format_name (every function of webapp.services.media takes it) is the source's probed
    format: its demuxer reads the file, none other (mediainput). Without it, ffmpeg picks
    among the accepted.
    """
    # An audio track may well stop before the video does: measure it against its own length
    # (and where it starts, see below).
    streams = first_streams(src, format_name)
    offset, length = streams.offset(streams.audio), streams.length(streams.audio)
    if length:
        # (Matroska's DURATION tag, as ffmpeg writes it, is where the track ends, offset
        # included: the file's own length caps the sum.)
        duration = min(offset + length, duration) if duration else offset + length
    with failing_as("The audio could not be extracted"), atomic_output(dst) as tmp:
        audio = ffmpeg_input(src, format_name)[streams.audio_spec]
        if offset >= OFFSET_TO_KEEP:
            # The WAV's time is the preview's: a track that starts after the picture (a
            # screen recording, an edited export, a camera's MPEG-TS) is preceded by as much
            # silence, or every caption would be early by as much. ffmpeg keeps or drops
            # that offset by itself depending on the format, hence from 0 and explicit.
            audio = (audio.filter("asetpts", "PTS-STARTPTS")
                     .filter("aresample", 16000, **ON_THE_CLOCK)
                     .filter("adelay", delays=f"{round(offset * 16000)}S", all=1))
        else:
            audio = audio.filter("aresample", 16000, **ON_THE_CLOCK)
        stream = audio.output(str(tmp), ac=1, ar=16000, acodec="pcm_s16le", f="wav")
        # A cut-off audio track is no decoding error (the demuxer just sees EOF early):
        # the output-duration check catches it.
        result = run(stream, duration, on_progress, paths=(src, tmp))
        require_output(tmp)
    return damage_note(result.damaged)
