"""The transcode step's ffmpeg run: a small web-playable MP4 preview of the video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ffmpeg
from ffmpeg.nodes import FilterableStream

from webapp.services import mediainput
from webapp.services.ffrun import (
    MediaError,
    ProgressCallback,
    atomic_output,
    check_reached_end,
    damage_note,
    failing_as,
    require_output,
    run,
)
from webapp.services.media.colours import SDR_TAGS, stream_hdr, to_sdr
from webapp.services.media.probe import deinterlaced, first_streams, number
from webapp.services.mediainput import ffmpeg_input

# The most audio bit rate the preview carries over from its source unchanged.
AUDIO_COPY_MAX_BITRATE = 192_000


def audio_copyable(src: Path, format_name: str | None = None) -> bool:
    """Whether the source's audio track (sound_stream) can go into the preview as it is:
    AAC-LC (what every browser plays in MP4), mono or stereo, 8-48 kHz, at most
    AUDIO_COPY_MAX_BITRATE (a stated rate: the stream's, or Matroska's BPS tag).

    Most uploads (phones, cameras, screen recorders) have such audio. Copying it spares
    the preview the encoder's loss of quality and its time: 4.6-4.8 s of a 20-23 s
    transcode of a 2-minute 720p talk here, since ffmpeg 5 encodes audio on the thread
    that also feeds x264 (docs/PERFORMANCE.md, section 1b).
    """
    return _copyable(first_streams(src, format_name).audio)


# The most sample rate a preview's AAC has: the 8-48 kHz that audio_copyable takes for
# what every browser plays.
PREVIEW_MAX_SAMPLE_RATE = 48000


def _copyable(stream: dict[str, Any]) -> bool:
    bit_rate = (number(stream.get("bit_rate"), int)
                or number(stream.get("tags", {}).get("BPS"), int))
    return (stream.get("codec_name") == "aac" and stream.get("profile") == "LC"
            and 1 <= (number(stream.get("channels"), int) or 0) <= 2
            and 8000 <= (number(stream.get("sample_rate"), int) or 0)
            <= PREVIEW_MAX_SAMPLE_RATE
            and bit_rate is not None and 0 < bit_rate <= AUDIO_COPY_MAX_BITRATE)


# The widest the preview is (pixels): what a 1080p screen shows, and within what phones'
# H.264 decoders take (4096 wide at most, for many 1920). Only a picture over 4:1 (a
# banner, a panorama: 4000x200 was previewed 4000 wide) is this wide at 480 lines.
PREVIEW_MAX_WIDTH = 1920

# The most frames a second the preview shows: what common screens show, and within H.264
# level 3.1 at 854x480. Slow-motion phone video (120, 240 fps) would keep them all.
PREVIEW_MAX_FRAME_RATE = 60

# A frame this much sooner (seconds) than 1/PREVIEW_MAX_FRAME_RATE after the last one kept
# is still kept: timestamps in milliseconds (Matroska) space 60 fps 16 or 17 ms apart.
_FRAME_SPACING_SLACK = 0.001


def transcode_preview(
    src: Path,
    dst: Path,
    duration: float | None,
    on_progress: ProgressCallback | None = None,
    max_height: int = 480,
    has_audio: bool = True,
    threads: int = 0,
    *,
    format_name: str | None = None,
    nice: int = 0,
) -> str | None:
    """Write a small web-playable MP4 (H.264/AAC, never upscaled, moov first for streaming),
    in SDR: HDR video is tone-mapped (to_sdr) and tagged BT.709 (SDR_TAGS).

    The source's audio goes in as it is when browsers play it and it is small enough
    (audio_copyable); other audio is encoded to AAC at 128 kb/s, in stereo at most (a 5.1
    mix's six channels would share the 128 kb/s). Video faster than PREVIEW_MAX_FRAME_RATE
    is brought down to it (capped_rate); every frame keeps its time, so a variable rate stays
    variable and a picture that starts after the sound still does (FRAME_TIMING_OPTIONS).
    ffmpeg runs `nice` steps below the caller's CPU
    priority (the TRANSCODE_NICE setting). Returns a note when damaged frames were skipped
    or concealed (damage_note), else None.
    """
    options: dict[str, Any] = {
        "vcodec": "libx264",
        "preset": "veryfast",
        "crf": 28,
        "pix_fmt": "yuv420p",
        "threads": threads,
        "movflags": "+faststart",
    }
    streams = first_streams(src, format_name)
    if has_audio:
        audio = streams.audio
        if _copyable(audio):
            options["acodec"] = "copy"
        else:
            options.update({"acodec": "aac", "b:a": "128k"})
            # Studio sound (88.2, 96, 192 kHz) would stay at its rate, past what browsers
            # are sure to play.
            if (number(audio.get("sample_rate"), int) or 0) > PREVIEW_MAX_SAMPLE_RATE:
                options["ar"] = PREVIEW_MAX_SAMPLE_RATE
            # Surround (5.1, 7.1) is mixed down as ffmpeg does by default (ITU-R BS.775:
            # the centre and the surrounds at -3 dB into each side, the LFE left out): a
            # small preview is heard on laptops and phones, and browsers play stereo best.
            if (number(audio.get("channels"), int) or 0) > 2:
                options["ac"] = 2
    hdr = stream_hdr(streams.video)
    if hdr:
        options.update(SDR_TAGS)
    with failing_as("The preview could not be encoded"), atomic_output(dst) as tmp:
        source = ffmpeg_input(src, format_name)
        # Height capped and kept even (yuv420p needs even sizes), 2 at least (a 1-pixel
        # high video, a tracking pixel or a test, came out 0 high: "ffmpeg stopped with an
        # error"); width follows the displayed aspect, in square pixels (a non-square pixel
        # aspect, as in anamorphic DVD/HDV, is not honoured by every player), so the
        # picture is that of the poster. The height is lowered further for a picture wider
        # than PREVIEW_MAX_WIDTH at it (a banner or panorama over 4:1).
        video = source[streams.video_spec]
        if streams.interlaced:
            video = deinterlaced(video)
        options.update(FRAME_TIMING_OPTIONS)
        if (streams.frame_rate or 0) > PREVIEW_MAX_FRAME_RATE:
            video = capped_rate(video)
            options["r"] = PREVIEW_MAX_FRAME_RATE
        video = (video
                 .filter("scale", "max(2,2*round(oh*dar/2))",
                         f"max(2,trunc(min(ih,min({max_height},{PREVIEW_MAX_WIDTH}/dar))/2)*2)")
                 .filter("setsar", 1))
        if hdr:  # (at the preview's size, from the source's 10 bits)
            video = to_sdr(video, hdr)
        outputs = [video, source[streams.audio_spec]] if has_audio else [video]
        try:
            result = run(ffmpeg.output(*outputs, str(tmp), **options), duration, on_progress,
                         check_complete=False, paths=(src, tmp), nice=nice)
        except MediaError as exc:
            if options.get("acodec") != "copy" or "[aac_adtstoasc]" not in (exc.detail or ""):
                raise
            # AAC from MPEG-TS (ADTS) is copied through a bitstream filter that stops the
            # whole run at a damaged frame's header, where a decoder skips the frame: such
            # sound is encoded instead, as sound that cannot be copied is.
            options.update({"acodec": "aac", "b:a": "128k"})
            result = run(ffmpeg.output(*outputs, str(tmp), **options), duration, on_progress,
                         check_complete=False, paths=(src, tmp), nice=nice)
        require_output(tmp)
        check_reached_end(_length(tmp), duration, result.detail)
    return damage_note(result.damaged)


# Each frame keeps its own time (`-fps_mode vfr`), on MPEG's 90 kHz clock, which holds
# the times of 240, 100, 60, 59.94, 30, 29.97, 25, 24 fps and Matroska's milliseconds
# exactly (23.976 fps to within 6 microseconds). ffmpeg 5.1's default for MP4 is a constant
# rate at the source's r_frame_rate, as for every format that does not declare variable
# rates: a phone's video that drops to 15 fps in low light (r_frame_rate 30) came out at
# 30 with every slow frame shown twice, and a picture starting 25 ms after the sound was
# moved to 0. With -r alone the times would be rounded to 1/r: 100 fps capped to every
# other frame would come out 1/60 and 2/60 s apart in turn. Frames with the same time
# (which no player shows) are the only ones dropped. For capped_rate, `-r` tells x264 the
# capped rate, so it states the H.264 level that goes with it, not that of 240 fps.
FRAME_TIMING_OPTIONS = {"fps_mode": "vfr", "enc_time_base:v": "1:90000"}


def capped_rate(video: FilterableStream) -> FilterableStream:
    """At most PREVIEW_MAX_FRAME_RATE frames a second, each shown at its own time: a frame
    sooner than 1/PREVIEW_MAX_FRAME_RATE s after the last one kept is dropped (120 and 240
    fps give 60, 100 fps 50, evenly spaced), and no frame is repeated (with
    FRAME_TIMING_OPTIONS).

    Not ffmpeg's `fps` filter: it makes a constant rate, repeating frames to fill every
    1/60 s, so a phone's variable rate video (ffprobe's r_frame_rate 120, from a quick pan,
    its average 30) would be made 60 fps of which half are copies; and it would keep 60 of
    100 fps, a jerk every third frame.
    """
    least = 1 / PREVIEW_MAX_FRAME_RATE - _FRAME_SPACING_SLACK
    # (kept: the first frame, one without a time, one far enough from the last kept)
    return video.filter(
        "select", f"isnan(prev_selected_t)+isnan(t)+gte(t-prev_selected_t,{least:.6f})")


def _length(preview: Path) -> float | None:
    """How long the written preview lasts (seconds), as its index says; None if unread.

    ffmpeg's last reported time is the last packet's decoding time, which trails the
    picture's end by the frames x264 holds back for its B-frames (two) and the last
    frame's own length: 2 s of a slideshow at 1 frame/s, half of a 0.3 s clip. Without
    sound to carry the report to the end, such whole videos were called cut short.
    """
    try:
        info = mediainput.ffprobe(preview, "-show_entries", "format=duration",
                                  format_name="mov")
    except MediaError:
        return None
    return number(info.get("format", {}).get("duration"), float)
