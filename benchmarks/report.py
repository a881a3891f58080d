"""RESULTS.md: the machine, the versions, and one table per section."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from harness import Row, Section

COLUMNS = ("measurement", "linreg", "baseline", "figure", "goal", "met", "reps")


@dataclass(frozen=True)
class RunInfo:
    command: str
    started: str  # UTC time
    seconds: float
    quick: bool
    reps: int
    machine: list[tuple[str, str]]
    versions: list[tuple[str, str]]
    load_before: str
    load_after: str
    done: bool  # False while sections are still to run


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Row]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        values = (
            row.measurement,
            row.linreg,
            row.baseline,
            row.figure,
            row.goal,
            row.met,
            row.reps,
        )
        lines.append("| " + " | ".join(cell(v) for v in values) + " |")
    return lines


def pairs(rows: list[tuple[str, str]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {key} | {cell(value)} |" for key, value in rows)]


def goal_count(sections: Sequence[Section]) -> str:
    judged = [row for s in sections for row in s.rows if row.goal]
    met = sum(row.met == "yes" for row in judged)
    return f"{met} of {len(judged)} goals met"


def render(info: RunInfo, sections: Sequence[Section]) -> str:
    mode = (
        f"**Quick run** (`--quick`): smaller sizes (listed per section) and {info.reps} "
        "repetitions: a smoke test, not the reference figures."
        if info.quick
        else f"Full run: the sizes of the brief, {info.reps} repetitions (more for start-up)."
    )
    lines = [
        "# linreg benchmark results",
        "",
        f"`{info.command}`, started {info.started}, "
        + (
            f"took {info.seconds / 60:.1f} min. "
            if info.done
            else f"**still running** ({info.seconds / 60:.1f} min so far). "
        )
        + mode,
        "",
        "Every figure is a median over repetitions measured side by side (alternating) with its "
        "baseline in this same run; the figure is the ratio of the medians (or, for memory, the "
        "difference). `met` compares the figure with the goal. `reps` is the number of "
        "repetitions behind each median (linreg/baseline when they differ).",
        "",
        f"**{goal_count(sections)}.**",
        "",
        "## Machine",
        "",
        *pairs(
            [
                *info.machine,
                ("load average before / after", f"{info.load_before} / {info.load_after}"),
            ]
        ),
        "",
        "## Versions",
        "",
        *pairs(info.versions),
    ]
    for number, section in enumerate(sections, start=1):
        lines += ["", f"## {number}. {section.title} (`--only {section.key}`)", ""]
        if section.skipped:
            lines += [f"Skipped: {section.skipped}"]
            continue
        if section.sizes:
            lines += [f"Sizes: {section.sizes}.", ""]
        if section.rows:
            lines += table(section.rows)
        if section.error:
            lines += ["", f"**Failed:** {cell(section.error)}"]
        if section.notes:
            lines += ["", *(f"- {note}" for note in section.notes)]
        if section.commands:
            lines += ["", "Commands:", "", "```", *section.commands, "```"]
    return "\n".join(lines) + "\n"
