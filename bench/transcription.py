"""Transcription quality and speed: word error rate and realtime factor on real recorded speech.

Runs vidpipe's own `webapp.services.transcription.transcribe` (CPU, int8, vad_filter=True,
language auto, WHISPER_THREADS as configured) over recorded human speech with reference
transcripts (bench/media.py: the LibriVox, "cards" and "go forward" clips shipped in the
pocketsphinx source distribution), once clip by clip and once with all clips joined into one
file (long-form, as a video's audio is). Reports WER (word-level edit distance after text
normalisation, summed over clips) and the realtime factor RTF = transcribe time / audio
duration with the model already loaded, plus import and load times.

    .venv/bin/python -m bench.transcription

Environment: BENCH_RUNS (timed passes, default 3); BENCH_MODELS (comma-separated, default
"tiny.en,base"; "base" is the multilingual faster-whisper base model reassembled from PyPI,
see bench/media.py; any other entry is a model directory as WHISPER_MODEL takes);
WHISPER_THREADS (as for the workers, default 0 = library default).
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench import media
from bench.common import Result, spread
from bench.pipeline import disturbance

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
MODELS = [m.strip() for m in os.environ.get("BENCH_MODELS", "tiny.en,base").split(",")
          if m.strip()]
THREADS = int(os.environ.get("WHISPER_THREADS", "0") or 0)

# Spoken forms of written abbreviations, applied to reference and hypothesis alike.
_WORDS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "metres": "meters", "metre": "meter"}
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> list[str]:
    """Cardinal number in English words (0 to 999,999,999)."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + (number_words(n % 10) if n % 10 else [])
    for size, name in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = number_words(n % size) if n % size else []
            return number_words(n // size) + [name] + rest
    raise ValueError(n)


def normalize(text: str) -> list[str]:
    """Lowercase words without punctuation; digits spelled out; "Mr." as "mister"."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)  # 1,000 -> 1000
    text = text.replace("'", "")                    # don't -> dont, on both sides
    words: list[str] = []
    for token in re.sub(r"[^a-z0-9]+", " ", text).split():
        if token.isdigit() and len(token) <= 9:
            words.extend(number_words(int(token)))
        else:
            words.append(_WORDS.get(token, token))
    return words


def edit_ops(ref: list[str], hyp: list[str]) -> dict[str, int]:
    """Substitutions, deletions and insertions of a minimal word alignment (Levenshtein)."""
    # Each cell: (cost, subs, dels, ins), compared by cost first.
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            c, s, d, n = prev[j - 1]
            diag = (c, s, d, n) if ref[i - 1] == hyp[j - 1] else (c + 1, s + 1, d, n)
            c, s, d, n = prev[j]
            up = (c + 1, s, d + 1, n)
            c, s, d, n = cur[j - 1]
            left = (c + 1, s, d, n + 1)
            cur.append(min(diag, up, left))
        prev = cur
    _, subs, dels, ins = prev[-1]
    return {"sub": subs, "del": dels, "ins": ins, "ref_words": len(ref)}


def wer(ops: list[dict[str, int]]) -> float:
    words = sum(o["ref_words"] for o in ops)
    return sum(o["sub"] + o["del"] + o["ins"] for o in ops) / words if words else 0.0


def model_path(name: str) -> str:
    return str(media.whisper_base_dir()) if name == "base" else name


def measure_model(name: str, clips: list[media.Clip], joined: Path) -> dict[str, Any]:
    from webapp.services import transcription

    out: dict[str, Any] = {"model": name, "cpu_threads": THREADS}
    path = model_path(name)
    if name == "base":
        out["model_dir"] = os.path.relpath(path)
    if "faster_whisper" not in sys.modules:
        started = time.perf_counter()
        import faster_whisper  # noqa: F401  (what a worker's horse pays before its first load)

        out["import_faster_whisper_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    transcription.load_model(path, THREADS)
    out["load_s"] = round(time.perf_counter() - started, 3)
    # The first call also loads the VAD model (once per process) and warms caches.
    started = time.perf_counter()
    transcription.transcribe(clips[0].path, path, cpu_threads=THREADS)
    out["first_call_s"] = round(time.perf_counter() - started, 3)

    per_pass: list[float] = []
    per_clip_times: dict[str, list[float]] = {f"{c.corpus}/{c.name}": [] for c in clips}
    hyps: dict[str, str] = {}
    langs: dict[str, str] = {}
    stable = True
    for _ in range(RUNS):
        total = 0.0
        for clip in clips:
            key = f"{clip.corpus}/{clip.name}"
            started = time.perf_counter()
            result = transcription.transcribe(clip.path, path, cpu_threads=THREADS)
            spent = time.perf_counter() - started
            total += spent
            per_clip_times[key].append(spent)
            stable = stable and hyps.get(key, result.text) == result.text
            hyps[key], langs[key] = result.text, result.language
        per_pass.append(total)
    audio = sum(c.duration for c in clips)

    clip_rows, ops_all, by_corpus = [], [], {}
    for clip in clips:
        key = f"{clip.corpus}/{clip.name}"
        ops = edit_ops(normalize(clip.reference), normalize(hyps[key]))
        ops_all.append(ops)
        by_corpus.setdefault(clip.corpus, []).append(ops)
        clip_rows.append({"clip": key, "seconds": clip.duration, "reference": clip.reference,
                          "hypothesis": hyps[key], "language": langs[key],
                          "errors": ops["sub"] + ops["del"] + ops["ins"],
                          "ref_words": ops["ref_words"],
                          "transcribe_s": round(statistics.median(per_clip_times[key]), 3)})
    out["clips"] = {
        "count": len(clips), "audio_s": round(audio, 3), "wer": round(wer(ops_all), 4),
        "errors": {k: sum(o[k] for o in ops_all) for k in ("sub", "del", "ins", "ref_words")},
        "wer_by_corpus": {k: round(wer(v), 4) for k, v in by_corpus.items()},
        "transcribe_s_per_pass": spread(per_pass),
        "rtf": round(statistics.median(per_pass) / audio, 4),
        "hypotheses_identical_across_passes": stable,
        "per_clip": clip_rows,
    }

    # Long-form: every clip in one file with short pauses, transcribed in one call.
    times, text, lang = [], "", ""
    for _ in range(RUNS):
        started = time.perf_counter()
        result = transcription.transcribe(joined, path, cpu_threads=THREADS)
        times.append(time.perf_counter() - started)
        text, lang = result.text, result.language
    joined_s = result.duration
    ops = edit_ops(normalize(" ".join(c.reference for c in clips)), normalize(text))
    out["joined"] = {
        "audio_s": joined_s, "wer": round(wer([ops]), 4), "errors": ops,
        "transcribe_s": spread(times), "rtf": round(statistics.median(times) / joined_s, 4),
        "language": lang, "hypothesis": text,
    }
    return out


def main() -> int:
    clips = media.real_speech_clips()
    joined = media.joined_clips(clips)
    results = []
    for name in MODELS:
        print(f"[transcription] {name}: {len(clips)} clips x {RUNS} passes ...", flush=True)
        cpu: dict[str, Any] = {}
        with disturbance(cpu):  # the machine may be shared: record what others took
            measured = measure_model(name, clips, joined)
        results.append(measured | cpu)
        r = results[-1]
        print(f"[transcription] {name}: WER {r['clips']['wer']:.1%} "
              f"(joined {r['joined']['wer']:.1%}), RTF {r['clips']['rtf']:.3f} "
              f"(joined {r['joined']['rtf']:.3f}), load {r['load_s']:.2f} s", flush=True)
    main_result = next((r for r in results if r["model"] == "tiny.en"), results[0])
    c, j = main_result["clips"], main_result["joined"]
    notes = (
        "Clip RTF is pessimistic for short utterances: whisper's encoder always runs a 30 s "
        "window, so a 2 s clip costs about as much as a 30 s one; the joined (long-form) "
        "RTF is the one that applies to a video's soundtrack. WER counts substitutions, "
        "deletions and insertions over the normalised reference words of all clips."
        f" Other processes took {main_result['cpu']['other_processes_s']:.1f} of "
        f"{main_result['cpu']['cores_x_wall_s']:.0f} CPU s while {main_result['model']} "
        "was measured (a shared machine)."
    )
    Result(
        name="transcription",
        title=f"Transcription: WER and realtime factor of {main_result['model']} on real speech",
        target="reported (no target)",
        measured=(f"WER {c['wer'] * 100:.1f} % over {c['count']} clips, RTF {c['rtf']:.3f} "
                  f"(joined into one file: WER {j['wer'] * 100:.1f} %, RTF {j['rtf']:.3f})"),
        met=None,
        details={
            "runs": RUNS,
            "data": "pocketsphinx 5.1.1 sdist test/data (PyPI): librivox/*.wav+.txt, "
                    "cards/*.wav + cards.transcription, goforward.raw ('go forward ten "
                    "meters', from cython/test/decoder_test.py)",
            "settings": "webapp.services.transcription.transcribe: CPU int8, vad_filter=True, "
                        "language auto, beam size 5 (faster-whisper default)",
            "models": results,
        },
        notes=notes,
    ).write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
