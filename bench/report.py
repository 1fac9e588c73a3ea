"""Write the table of bench/results/*.json into docs/PERFORMANCE.md (between markers)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
VERDICT = {True: "met", False: "missed", None: "reported"}
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
# Each benchmark's section below the table (the lanes are a second baseline of section 1).
SECTIONS = {"pipeline": "1", "lanes": "1b", "polling": "2", "trigger": "3",
            "progress_writes": "4", "upload_memory": "5", "scale": "6", "transcription": "7",
            "eta": "8", "keyframes": "9", "search": "10", "exchange": "11", "storyboard": "12"}
ORDER = list(SECTIONS)


def table() -> str:
    rows = ["| section | benchmark | target | measured | met | previous result |",
            "|---|---|---|---|---|---|"]
    results = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob("*.json")}
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    for name in names:
        r = results[name]
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        before = r.get("previous")
        was = (f"{before['measured']} ({VERDICT[before['met']]}, {before['when']})"
               if before else "—")
        section = SECTIONS.get(name, "—")
        rows.append(f"| {section} | {r['title']} | {r['target']} | {r['measured']} | {met} "
                    f"| {was} |")
    when = sorted({r["when"] for r in results.values()})
    machines = sorted({r["machine"] for r in results.values()})
    rows.append("")
    rows.append(f"Measured {', '.join(when[:1] + when[-1:]) if when else '—'} on "
                f"{'; '.join(machines) or '—'}.")
    return "\n".join(rows)


def main() -> None:
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{table()}\n{END}{tail}")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
