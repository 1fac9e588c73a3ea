"""Generates tiny real media files for tests (ffmpeg lavfi sources and espeak-ng speech)."""

from __future__ import annotations

import json
import random
import struct
import subprocess
from pathlib import Path

FFMPEG = ("ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error")


def _ffmpeg(*args: str) -> None:
    done = subprocess.run([*FFMPEG, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed:\n{done.stderr}")


def make_video(
    dst: Path,
    duration: float = 4.0,
    size: str = "320x240",
    rate: int = 25,
    audio: bool = True,
    faststart: bool = False,
    audio_duration: float | None = None,
    gop: int | None = None,
    compact: bool = False,
) -> Path:
    """H.264/AAC MP4 of a moving test pattern, with a 440 Hz tone unless audio=False.

    faststart puts the moov index first, so a truncated copy still probes (and fails later);
    audio_duration (default: duration) lets the tone outlast the picture, as in many uploads;
    gop sets the frames between keyframes (x264's default: 250, i.e. one keyframe here);
    compact spends encoding time on a file 7 times smaller (for long videos).
    """
    inputs = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}"]
    quality = ["-preset", "veryfast", "-crf", "30"] if compact else ["-preset", "ultrafast"]
    codecs = ["-c:v", "libx264", *quality, "-pix_fmt", "yuv420p"]
    if gop:
        codecs += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if audio:
        tone = f"sine=frequency=440:sample_rate=44100:duration={audio_duration or duration}"
        inputs += ["-f", "lavfi", "-i", tone]
        codecs += ["-c:a", "aac", "-b:a", "96k"]
    if faststart:
        codecs += ["-movflags", "+faststart"]
    _ffmpeg(*inputs, *codecs, str(dst))
    return dst


def make_black_opening(dst: Path, black: float = 3.0, picture: float = 5.0,
                       size: str = "320x240", gop: int | None = None,
                       x264_params: str | None = None) -> Path:
    """H.264 MP4 (no audio) that opens with `black` seconds of black, then `picture`
    seconds of a moving test pattern (a fade-in's dark start, a leader); x264_params as
    x264 takes them (e.g. "open-gop=1")."""
    rate = 25
    graph = (f"color=black:size={size}:rate={rate}:duration={black}[b];"
             f"testsrc2=size={size}:rate={rate}:duration={picture}[p];[b][p]concat=n=2:v=1[v]")
    codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if gop:
        codecs += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    if x264_params:
        codecs += ["-x264-params", x264_params]
    _ffmpeg("-filter_complex", graph, "-map", "[v]", *codecs, str(dst))
    return dst


# Codecs by container: what phones, browsers and recorders commonly write in each.
_CODECS = {
    ".mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    ".webm": ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k",
              "-c:a", "libopus"],
    ".mov": ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    # (Wikimedia Commons' video: a keyframe every 12 frames, ffmpeg's default)
    ".ogv": ["-c:v", "libtheora", "-q:v", "5", "-c:a", "libvorbis"],
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    ".flac": ["-c:a", "flac"],
}


def make_media(dst: Path, duration: float = 12.0, audio_duration: float | None = None) -> Path:
    """A test pattern and/or a tone in the container (and usual codecs) of dst's suffix:
    .mkv .webm .mov .ogv (picture and tone, the tone lasting audio_duration) or .wav .mp3 .flac
    (tone only). For .mp4 see make_video."""
    codecs = _CODECS[dst.suffix]
    inputs = []
    if "-c:v" in codecs:
        inputs += ["-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={duration}"]
    tone = f"sine=frequency=440:sample_rate=48000:duration={audio_duration or duration}"
    _ffmpeg(*inputs, "-f", "lavfi", "-i", tone, *codecs, str(dst))
    return dst


def make_late_start(dst: Path, start: float = 2.0, duration: float = 3.0) -> Path:
    """A test pattern and a tone (codecs as make_media's, H.264/AAC for .mp4) whose
    timestamps all begin `start` seconds in, as in a clip cut from a recording or a
    stream with its timestamps kept."""
    codecs = _CODECS.get(dst.suffix, _CODECS[".mov"])
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={duration}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
            *codecs, "-output_ts_offset", str(start), str(dst))
    return dst


def make_recorded_webm(dst: Path, duration: float = 3.0) -> Path:
    """A WebM as browsers' MediaRecorder writes it (VP8/Opus, written as it records): no
    duration in its header and no index (ffmpeg writing to a pipe does the same)."""
    with dst.open("wb") as out:
        done = subprocess.run(
            [*FFMPEG, "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=30:duration={duration}",
             "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
             *_CODECS[".webm"], "-f", "webm", "pipe:1"],
            stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg (recorded WebM) failed:\n{done.stderr}")
    return dst


def make_interlaced(dst: Path, duration: float = 2.0) -> Path:
    """Interlaced video as a PAL camcorder, DVD or broadcast records it: MPEG-2, 720x576,
    25 frames of two fields each (top first, 1/50 s apart), in MPEG-TS. The picture is a
    white bar (100x300) crossing black at 800 pixels a second, so that the two fields of a
    frame show it 16 pixels apart; no sound."""
    _ffmpeg("-f", "lavfi", "-i", f"color=black:size=720x576:rate=50:duration={duration}",
            "-f", "lavfi", "-i", "color=white:size=100x300:rate=50", "-filter_complex",
            "[0][1]overlay=x='40+t*800':y=100:shortest=1,tinterlace=mode=merge,"
            "setfield=tff[v]", "-map", "[v]", "-c:v", "mpeg2video", "-q:v", "2",
            "-flags", "+ildct+ilme", "-top", "1", str(dst))
    return dst


def make_speech_wav(dst: Path, text: str, voice: str = "en-us") -> Path:
    """espeak-ng reading text in a US English voice, or another (22.05 kHz mono WAV).

    Debian's espeak-ng reads no Chinese characters: for Mandarin give pinyin with tone
    numbers to the voice "cmn-latn-pinyin"; its Japanese voice ("ja") reads kana only.
    """
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "150", "-w", str(dst), text],
        check=True, capture_output=True, timeout=60,
    )
    return dst


def make_speech_video(dst: Path, text: str, size: str = "320x240",
                      audio_delay: float = 0.0) -> Path:
    """MP4 of a test pattern lasting exactly as long as the spoken text; with audio_delay,
    the sound track starts that many seconds after the picture (as in screen recordings
    and edited exports: its first packet is stamped that late, no silence is stored)."""
    speech = make_speech_wav(dst.with_name(f"{dst.stem}.speech.wav"), text)
    try:
        _ffmpeg(
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25",
            "-itsoffset", str(audio_delay), "-i", str(speech),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(dst),
        )
    finally:
        speech.unlink(missing_ok=True)
    return dst


def make_phone_copy(src: Path, dst: Path, start: float = 1.2, rotation: int = 90) -> Path:
    """src's streams (copied) as a phone or an editor may leave them: every timestamp
    `start` seconds late (a clip cut from a longer recording, its clock kept) and the
    picture stored sideways with a `rotation` flag (portrait video); MP4 or MOV."""
    _ffmpeg("-i", str(src), "-map", "0", "-c", "copy", "-output_ts_offset", str(start),
            "-metadata:s:v:0", f"rotate={rotation}", str(dst))
    return dst


def make_audio_only(dst: Path, text: str) -> Path:
    """Speech as a compressed audio file; the codec follows dst's suffix (.m4a AAC, .mp3)."""
    speech = make_speech_wav(dst.with_name(f"{dst.stem}.speech.wav"), text)
    try:
        _ffmpeg("-i", str(speech), str(dst))
    finally:
        speech.unlink(missing_ok=True)
    return dst


def make_tones_wav(dst: Path, duration: float = 5.0) -> Path:
    """Tones and no speech: a warbling, pulsing siren-like sound (16 kHz mono WAV).

    Whisper without voice-activity detection "hears" words in this (tiny.en invents phrases
    like "We need to go."), which is what makes it a useful no-speech sample.
    """
    # Quoted so the filtergraph parser leaves the expression's commas alone.
    tone = "0.5*sin(2*PI*(200+100*sin(2*PI*3*t))*t)*(0.5+0.5*sin(2*PI*4*t))"
    _ffmpeg(
        "-f", "lavfi", "-i", f"aevalsrc='{tone}':s=16000:d={duration}",
        "-ac", "1", "-c:a", "pcm_s16le", str(dst),
    )
    return dst


def make_image(dst: Path, size: str = "320x240") -> Path:
    """A single still picture; the format follows dst's suffix (.png, .jpg)."""
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}", "-frames:v", "1", str(dst))
    return dst


def make_single_frame(dst: Path, size: str = "320x240") -> Path:
    """A video file (the container follows dst's suffix) of one H.264 frame and no sound:
    a still picture saved as a video."""
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}", "-frames:v", "1",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", str(dst))
    return dst


def make_subtitles_only(dst: Path) -> Path:
    """An MP4 that holds one subtitle track (mov_text) and nothing else."""
    cues = dst.with_name(f"{dst.stem}.srt")
    cues.write_text("1\n00:00:00,000 --> 00:00:02,000\nHello\n", encoding="utf-8")
    try:
        _ffmpeg("-i", str(cues), "-c:s", "mov_text", str(dst))
    finally:
        cues.unlink(missing_ok=True)
    return dst


def make_empty_recording(dst: Path) -> Path:
    """An MP4 (M4A) recording stopped before its first sound frame: whole (ftyp, mdat and
    its index, moov), but the index names no track."""
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-t", "0", "-c:a", "aac",
            str(dst))
    return dst


def make_truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy only the first fraction of src's bytes, like an interrupted upload."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_repeated(src: Path, dst: Path, copies: int) -> Path:
    """`copies` times `src` end to end, without re-encoding (concat demuxer, stream copy):
    a long video for the cost of a short one."""
    listing = dst.with_name(f"{dst.stem}.list.txt")
    listing.write_text(f"file '{src.resolve()}'\n" * copies)
    try:
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(dst))
    finally:
        listing.unlink(missing_ok=True)
    return dst


def make_ramp_video(dst: Path, duration: float, rate: int, per_second: int,
                    x264_params: str, gop: int) -> Path:
    """A silent H.264 MP4 whose picture is grey of luma 64 + `per_second` x t (t in
    seconds; never black): each frame tells its own time. Encoded with B-frames (x264
    `veryfast`, plus `x264_params`) and a keyframe every `gop` frames."""
    ramp = (f"color=c=black:size=320x240:rate={rate}:duration={duration},"
            f"geq=lum='min(255,64+{per_second}*T)':cb=128:cr=128")
    _ffmpeg("-f", "lavfi", "-i", ramp, "-c:v", "libx264", "-preset", "veryfast",
            "-x264-params", x264_params, "-g", str(gop), "-keyint_min", str(gop),
            "-sc_threshold", "0", "-pix_fmt", "yuv420p", str(dst))
    return dst


# Solid patches (RGB) of make_patches_video, each filling a quarter of the picture:
# top left, top right, bottom left, bottom right.
PATCHES = ((32, 160, 64), (200, 50, 40), (40, 64, 200), (235, 235, 235))


def make_patches_video(dst: Path, transfer: str | None = None, size: str = "640x360",
                       duration: float = 3.0) -> Path:
    """A silent MP4 of four solid colour patches (PATCHES). SDR: H.264 tagged BT.709, as
    phones and cameras record. With `transfer` ("smpte2084" PQ, "arib-std-b67" HLG): the
    same picture in HDR, as an iPhone records it: HEVC Main 10, BT.2020 colours and matrix,
    tagged so. zscale converts it, putting SDR's white at HDR's reference white, 203 nits
    (ITU-R BT.2408), so the SDR picture is what the HDR one should look like on SDR."""
    width, height = (int(n) for n in size.split("x"))
    w, h = width // 2, height // 2
    boxes = ",".join(f"drawbox=x={x}:y={y}:w={w}:h={h}:t=fill:c=0x{r:02X}{g:02X}{b:02X}"
                     for (x, y), (r, g, b) in zip([(0, 0), (w, 0), (0, h), (w, h)], PATCHES,
                                                  strict=True))
    picture = ["-f", "lavfi", "-i",
               f"color=c=0x808080:size={size}:rate=25:duration={duration},{boxes},"
               "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"]
    if transfer is None:
        _ffmpeg(*picture, "-c:v", "libx264", "-preset", "ultrafast", "-colorspace", "bt709",
                "-color_primaries", "bt709", "-color_trc", "bt709", str(dst))
        return dst
    to_hdr = ("setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv,"
              "zscale=t=linear:npl=203,format=gbrpf32le,zscale=p=bt2020,"
              f"zscale=t={transfer}:m=bt2020nc:r=tv:npl=203,format=yuv420p10le")
    # (crf 12: at x265's default 28 the patches themselves drift by up to 10 levels)
    _ffmpeg(*picture, "-vf", to_hdr, "-c:v", "libx265", "-preset", "ultrafast", "-crf", "12",
            "-x265-params", "log-level=error", "-tag:v", "hvc1", "-colorspace", "bt2020nc",
            "-color_primaries", "bt2020", "-color_trc", transfer, str(dst))
    return dst


# The picture of make_cover_first's cover (RGB): a solid colour no generated video shows.
COVER = (192, 64, 192)


def make_cover_first(dst: Path, video: Path, kind: str = "attached") -> Path:
    """`video`'s streams (copied) behind a cover picture (COVER, 300x300, one frame) that is
    the file's first video stream, as download tools and podcasts publishing audio as video
    leave it; the container follows dst's suffix (.mp4, .mkv). `kind`:

    - "attached": cover art (ffmpeg's `-disposition attached_pic`). In MP4 it is a `covr`
      box, which ffmpeg writes after the tracks: it is moved ahead of them (where taggers
      put it), so the cover is stream 0. Matroska keeps it as a one-frame video track that
      is not flagged default.
    - "track": a one-frame video track flagged default like the video (mkvmerge flags every
      track default).
    """
    cover = "0x{:02X}{:02X}{:02X}".format(*COVER)
    disposition = "attached_pic" if kind == "attached" else "default"
    _ffmpeg("-f", "lavfi", "-i", f"color=c={cover}:size=300x300:rate=25:duration=0.04",
            "-i", str(video), "-map", "0:v", "-map", "1", "-c", "copy", "-c:v:0", "mjpeg",
            "-disposition:v:0", disposition, "-disposition:v:1", "default", str(dst))
    if kind == "attached" and dst.suffix == ".mp4":
        _user_data_first(dst)
    return dst


def _user_data_first(path: Path) -> None:
    """Moves the MP4's user data (`udta`, where cover art is) ahead of its tracks inside
    `moov`. The sample offsets stay right as `moov` keeps its size and follows `mdat`."""
    data = path.read_bytes()
    out = bytearray()
    for kind, box in _boxes(data):
        if kind == b"moov":
            assert out, "moov must follow mdat (no faststart) for its offsets to hold"
            children = sorted(_boxes(box[8:]), key=lambda c: {b"mvhd": 0, b"udta": 1}.get(
                c[0], 2))
            box = box[:8] + b"".join(child for _, child in children)
        out += box
    path.write_bytes(bytes(out))


def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    """The boxes (32-bit sizes only) one after another in `data`: (type, whole box)."""
    boxes, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        boxes.append((kind, data[at:at + size]))
        at += size
    return boxes


def make_commentary_first(dst: Path, duration: float = 3.0) -> Path:
    """A test pattern with two sound tracks, the container following dst's suffix (.mp4,
    .mkv): first a commentary (a 1000 Hz tone, not flagged default), then the programme's
    sound (a 440 Hz tone, flagged default), as films and talks with a director's or
    translator's track come."""
    tone = "sine=frequency={}:sample_rate=48000:duration=" + str(duration)
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate=25:duration={duration}",
            "-f", "lavfi", "-i", tone.format(1000), "-f", "lavfi", "-i", tone.format(440),
            "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-disposition:a:0", "comment",
            "-disposition:a:1", "default", str(dst))
    return dst


def make_with_subtitles(dst: Path, duration: float = 1.0, cue_end: float = 3.0) -> Path:
    """A test pattern and a tone lasting `duration` with a subtitle track (mov_text in .mp4,
    SubRip in .mkv) whose last cue ends at `cue_end`: closing credits' last line, or a
    rip's subtitles timed to a longer cut, outlasting the sound and picture."""
    cues = dst.with_name(f"{dst.stem}.srt")
    end = f"00:00:{int(cue_end):02d},{round(cue_end % 1 * 1000):03d}"
    cues.write_text(f"1\n00:00:00,100 --> {end}\nThe end\n", encoding="utf-8")
    try:
        _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={duration}",
                "-f", "lavfi", "-i", f"sine=sample_rate=48000:duration={duration}",
                "-i", str(cues), "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264",
                "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                "-c:s", "mov_text" if dst.suffix == ".mp4" else "srt", str(dst))
    finally:
        cues.unlink(missing_ok=True)
    return dst


def make_clock_jump(dst: Path, duration: float = 2.0, jump: float = 60.0) -> Path:
    """An MPEG-TS (H.264/AAC) of a test pattern and a tone whose timestamps jump `jump`
    seconds forward halfway (a recorder's clock reset, HLS segments joined across a
    discontinuity); written in one go, so its continuity counters run on unbroken."""
    shift = f"PTS+if(gte(T,{duration / 2}),{jump}/TB,0)"
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={duration}",
            "-f", "lavfi", "-i", f"sine=sample_rate=48000:duration={duration}",
            "-vf", f"setpts='{shift}'", "-af", f"asetpts='{shift}'", "-fps_mode", "passthrough",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            str(dst))
    return dst


def make_damaged(src: Path, dst: Path, garbage: int, at: float = 0.5, seed: int = 1) -> Path:
    """src with `garbage` bytes of noise written over its own from `at` (a share of its
    size) on: every byte is there, the index too (so the upload is accepted), but frames in
    the middle are damaged, as by a flaky disk or network."""
    data = bytearray(src.read_bytes())
    start = int(len(data) * at)
    noise = random.Random(seed)
    data[start:start + garbage] = bytes(noise.randrange(256) for _ in range(garbage))
    dst.write_bytes(bytes(data))
    return dst


def make_concealed(src: Path, dst: Path, at: float, garbage: int = 400, seed: int = 3) -> Path:
    """src with `garbage` bytes of noise written over the middle of the video packet shown
    at `at` seconds: its size and framing are intact, so the decoder reads the picture,
    finds it damaged, and hides the damage from its neighbours (concealment) without an
    error line, as damage inside a frame from a flaky disk or network does."""
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-of", "json",
         "-show_entries", "packet=pts_time,pos,size", str(src)],
        capture_output=True, text=True, check=True, timeout=60)
    packet = min(json.loads(done.stdout)["packets"], key=lambda p: abs(float(p["pts_time"]) - at))
    data = bytearray(src.read_bytes())
    start = int(packet["pos"]) + int(packet["size"]) // 3
    noise = random.Random(seed)
    data[start:start + garbage] = bytes(noise.randrange(256) for _ in range(garbage))
    dst.write_bytes(bytes(data))
    return dst


def make_joined_ts(dst: Path, segments: int = 3, seconds: float = 1.0) -> Path:
    """H.264/AAC MPEG-TS segments, each muxed on its own (as a camera, a phone's recorder or
    HLS writes them) with continuous timestamps, then joined end to end like `cat`: their
    continuity counters start again at each join, which ffmpeg reports as corrupt packets."""
    pattern = dst.with_name(f"{dst.stem}.part%d.ts")
    duration = segments * seconds
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=25:duration={duration}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={duration}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
            "-c:a", "aac", "-f", "segment", "-segment_time", str(seconds),
            "-segment_format", "mpegts", str(pattern))
    parts = [dst.with_name(f"{dst.stem}.part{i}.ts") for i in range(segments)]
    try:
        dst.write_bytes(b"".join(part.read_bytes() for part in parts))
    finally:
        for part in parts:
            part.unlink(missing_ok=True)
    return dst
