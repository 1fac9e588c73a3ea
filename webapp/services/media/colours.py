"""Colours of the pictures made: JPEG's, and HDR video tone-mapped to SDR (zscale, tonemap)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ffmpeg.nodes import FilterableStream

from webapp.services.media.probe import first_streams

# What every JPEG decoder (browsers too) assumes of a JPEG's colours: BT.601 at full range.
# Without it ffmpeg keeps the source's BT.709 (phones, cameras, HD video) as it is, and the
# picture is read as BT.601: greens too bright, reds and blues off.
JPEG_COLORS = {"out_color_matrix": "bt601", "out_range": "full"}


# HDR video, by its transfer (ffprobe's color_transfer): PQ (smpte2084: HDR10, the base of
# Dolby Vision) and HLG (arib-std-b67: what iPhones record by default since the iPhone 12),
# in BT.2020 colours and 10 bits. Made SDR without tone-mapping it looks washed out (an
# HLG green of 28,156,61 came out 89,134,69, a white of 232 grey 183), and an 8-bit preview
# still tagged HDR is shown wrong by browsers: such video is tone-mapped to SDR BT.709.
HDR_TRANSFERS = frozenset({"smpte2084", "arib-std-b67"})
# Where HDR keeps SDR's white, in nits: the reference ("graphics") white of ITU-R BT.2408,
# that of HLG at 75 % on its nominal 1000-nit display too. Tone-mapping puts it at SDR's
# white, so what was in SDR's range keeps its colours.
HDR_REFERENCE_WHITE = 203.0
# The brightest an HDR picture is taken to reach (nits): HLG's nominal display, and what
# most PQ video is mastered on (a PQ master's brighter highlights end up SDR's white).
HDR_PEAK = 1000.0
# Up to this share of SDR's white (linear light) tone-mapping changes nothing; brighter
# light (HDR's highlights, up to the peak) is squeezed smoothly into what remains above it
# (ffmpeg's tonemap=mobius). 0.7: SDR's range within a few levels (a white of 232 came out
# 225-228), HLG's 75-100 % (203-1000 nits) 239-255; mobius's default 0.3 greyed that
# white (206), the usual hable (npl=100) dimmed everything (white 179).
TONEMAP_KNEE = 0.7


@dataclass(frozen=True)
class Hdr:
    """An HDR video stream's colours, as zscale names them (ffprobe's names)."""

    transfer: str  # smpte2084 or arib-std-b67
    primaries: str  # bt2020 mostly
    matrix: str  # bt2020nc mostly
    range: str  # tv or pc


def hdr_colours(src: Path, format_name: str | None = None) -> Hdr | None:
    """The video stream's (picture_stream) HDR colours; None for SDR (or when they cannot
    be read)."""
    return stream_hdr(first_streams(src, format_name).video)


def stream_hdr(stream: dict[str, Any]) -> Hdr | None:
    """A probed video stream's HDR colours; None for SDR. Colours a file leaves unstated
    are BT.2020's, limited range (every HDR format's)."""
    transfer = stream.get("color_transfer")
    if transfer not in HDR_TRANSFERS:
        return None

    def stated(key: str, default: str) -> str:
        value = stream.get(key)
        return value if value and value not in ("unknown", "unspecified", "reserved") \
            else default

    return Hdr(transfer=transfer, primaries=stated("color_primaries", "bt2020"),
               matrix=stated("color_space", "bt2020nc"), range=stated("color_range", "tv"))


def to_sdr(video: FilterableStream, hdr: Hdr) -> FilterableStream:
    """HDR video tone-mapped to SDR: BT.709 colours, transfer and matrix, limited range,
    8 bits (yuv420p). Its reference white becomes SDR's white (HDR_REFERENCE_WHITE),
    then light above TONEMAP_KNEE, up to HDR_PEAK, is compressed below 1.0, with
    hue kept (no desaturation), in linear light and float: zscale (zimg) and tonemap."""
    return (video
            # (linear light and BT.709 primaries in one pass: a second costs 10 %)
            .filter("zscale", tin=hdr.transfer, pin=hdr.primaries, min=hdr.matrix,
                    rin=hdr.range, t="linear", p="bt709", npl=HDR_REFERENCE_WHITE)
            .filter("format", "gbrpf32le")
            .filter("tonemap", "mobius", param=TONEMAP_KNEE,
                    peak=round(HDR_PEAK / HDR_REFERENCE_WHITE, 3), desat=0)
            .filter("zscale", t="bt709", m="bt709", r="tv")
            .filter("format", "yuv420p"))


# What the preview is tagged when its source was HDR (to_sdr), for players to take it as
# SDR: a tone-mapped picture still tagged BT.2020 HLG/PQ is shown wrong.
SDR_TAGS = {"color_primaries": "bt709", "color_trc": "bt709", "colorspace": "bt709",
            "color_range": "tv"}
