"""The console's account of an export: variants against their budgets, and what each tier ships and why."""

from pathlib import Path

from rich.console import Console
from rich.table import Table

from tierkit.export.tiers import budget_latency
from tierkit.runtime.cpu import TARGET_NAMES


def print_summary(manifest: dict, out: Path) -> None:
    """The variants against their budgets as a table, then one line per tier saying what ships and why."""
    table = Table(title=f"tierkit export in {out}")
    for column in ("variant", "ships", "accuracy", "drop (points)", "size", "budget p50", "budgets"):
        table.add_column(column, justify="left" if column in ("variant", "ships", "budgets") else "right")
    teacher, variants = manifest["teacher"], manifest["variants"]
    for v in [teacher, *variants]:
        failed = [name for name, passed in v.get("checks", {}).items() if not passed]
        verdict = "[green]pass[/]" if not failed else f"[red]fail: {', '.join(failed)}[/]"
        table.add_row(
            v["name"],
            "[green]yes[/]" if v.get("ships") else "no",
            f"{100 * v['accuracy']:.2f}%",
            f"{-100 * v.get('accuracy_drop', 0):+.2f}",
            f"{v['bytes'] / 1024:.1f} KiB",
            f"{budget_latency(v)['p50_ms']:.4f} ms on {v['budget_hardware']}" if "budget_hardware" in v else "",
            verdict if "checks" in v else "reference",
        )
    console = Console()
    console.print(table)
    for tier in dict.fromkeys(v["tier"] for v in variants):
        shipped = [v for v in variants if v["tier"] == tier and v["ships"]]
        if shipped:
            console.print(f"[bold]{tier}[/] ships {shipped[0]['name']}: {shipped[0]['why']}")
            for stand_in in (v for v in variants if v["tier"] == tier and v["ships_for"] and not v["ships"]):
                targets = ", ".join(TARGET_NAMES[t] for t in stand_in["ships_for"])
                console.print(f"  and {stand_in['name']} on {targets}: {shipped[0]['name']} is not exact there")
        else:
            reasons = "; ".join(f"{v['name']} {v['why']}" for v in variants if v["tier"] == tier)
            console.print(f"[red][bold]{tier}[/] ships nothing: {reasons}[/]")
    for note in manifest["profiling"]["skipped"]:
        console.print(f"Not measured: {note}")
    console.print(f"Wrote {out / 'manifest.json'}, {out / 'report.md'} and {out / 'pareto.png'}")
