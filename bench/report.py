"""Write the table of bench/results/*.json into docs/PERFORMANCE.md (between markers)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS

DOC = Path(__file__).resolve().parent.parent / "docs" / "PERFORMANCE.md"
VERDICT = {True: "met", False: "missed", None: "reported"}
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ORDER = ["pipeline", "lanes", "polling", "trigger", "progress_writes", "upload_memory", "scale",
         "transcription", "eta", "keyframes", "search", "exchange"]


def table() -> str:
    rows = ["| # | benchmark | target | measured | met | previous result |",
            "|---|---|---|---|---|---|"]
    results = {p.stem: json.loads(p.read_text()) for p in RESULTS.glob("*.json")}
    names = [n for n in ORDER if n in results] + sorted(set(results) - set(ORDER))
    for i, name in enumerate(names, 1):
        r = results[name]
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        before = r.get("previous")
        was = (f"{before['measured']} ({VERDICT[before['met']]}, {before['when']})"
               if before else "—")
        rows.append(f"| {i} | {r['title']} | {r['target']} | {r['measured']} | {met} | {was} |")
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
