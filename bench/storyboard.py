"""The storyboard of a video whose keyframes are rarer than its tiles: every frame decoded,
against the reference frames alone (`-skip_frame noref`, webapp/services/media/thumbnails.py).

Input (bench/media.py, cached in bench/.cache/): the pipeline benchmark's 2-minute 720p
talk, encoded without a GOP setting, i.e. as ffmpeg writes H.264 unless told otherwise
(x264's default: a keyframe every 250 frames, 8.3 s at 30 fps, against the storyboard's 2 s
tiles; x264 `veryfast`: 3 B-frames in a row, the middle one a reference). For each of
BENCH_RUNS (5) rounds, the sides alternating: the storyboard's ffmpeg run as
`make_storyboard` plans it, once decoding every frame (the code before) and once skipping
non-reference frames (the code now); wall time, and the CPU time of ffmpeg (the process's
children). Both sprites are compared tile by tile (mean luma difference of each tile, 0-255):
they show the same moments a few frames apart.

    .venv/bin/python -m bench.storyboard
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench import media as benchmedia
from bench.common import Result, spread

RUNS = int(os.environ.get("BENCH_RUNS", "5"))


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def draw(src: Path, dst: Path, plan, duration: float) -> dict[str, float]:
    from webapp.services.media import thumbnails
    from webapp.services.media.probe import first_streams

    cpu, started = cpu_of_children(), time.perf_counter()
    video = first_streams(src).video_spec
    frames = thumbnails._draw_storyboard(src, dst, plan, duration, None, None, video)
    return {"wall_s": round(time.perf_counter() - started, 3),
            "cpu_s": round(cpu_of_children() - cpu, 3), "tiles": frames}


def tile_lumas(sprite: Path, plan) -> list[int]:
    """Each tile's mean luma, as ffmpeg reads the JPEG (the sprite scaled to one pixel a
    tile)."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(sprite), "-vf",
         f"scale={plan.columns}:{plan.rows}:flags=area", "-f", "rawvideo", "-pix_fmt", "gray",
         "-"], capture_output=True, check=True)
    return list(done.stdout[: plan.count])


def main() -> int:
    from webapp.services.keyframes import keyframe_gap
    from webapp.services.media.probe import probe
    from webapp.services.media.thumbnails import plan_storyboard

    src = benchmedia.speech_video(120, gop_seconds=None)
    info = probe(src)
    duration, width, height = info.duration, info.width, info.height
    plan = plan_storyboard(duration, width, height)
    gap = keyframe_gap(src, duration)
    print(f"[storyboard] {src.name}: {duration:.1f} s, keyframes up to {gap:.2f} s apart, "
          f"tiles every {plan.interval:.2f} s", flush=True)
    plans = {"every frame": replace(plan, references_only=False),
             "reference frames": replace(plan, references_only=True)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in plans}
    with tempfile.TemporaryDirectory(prefix="vidpipe-bench-storyboard-") as tmp:
        sprites = {name: Path(tmp) / f"{i}.jpg" for i, name in enumerate(plans)}
        for run in range(RUNS):
            order = list(plans) if run % 2 == 0 else list(reversed(plans))
            for name in order:
                runs[name].append(draw(src, sprites[name], plans[name], duration))
                print(f"[storyboard] run {run + 1} {name}: {runs[name][-1]}", flush=True)
        lumas = {name: tile_lumas(sprites[name], plans[name]) for name in plans}
    differences = [abs(a - b) for a, b in zip(lumas["every frame"], lumas["reference frames"],
                                              strict=True)]
    cpu = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    saved = 1 - cpu["reference frames"] / cpu["every frame"]
    Result(
        name="storyboard",
        title="Storyboard of a 2-minute 720p talk with x264's default GOP: every frame "
              "decoded vs reference frames alone",
        target="(none: reported)",
        measured=(f"ffmpeg CPU {cpu['every frame']:.2f} → {cpu['reference frames']:.2f} s "
                  f"({saved:.0%} less), wall {wall['every frame']:.2f} → "
                  f"{wall['reference frames']:.2f} s (median of {RUNS})"),
        met=None,
        details={"input": {"file": src.name, "duration_s": duration,
                           "keyframe_gap_s": gap, "tile_interval_s": plan.interval,
                           "tiles": plan.count},
                 "runs": runs,
                 "cpu_s": {name: spread([r["cpu_s"] for r in rs]) for name, rs in runs.items()},
                 "wall_s": {name: spread([r["wall_s"] for r in rs])
                            for name, rs in runs.items()},
                 "tile_luma_difference": {"max": max(differences),
                                          "mean": round(statistics.mean(differences), 2)}},
    ).write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
