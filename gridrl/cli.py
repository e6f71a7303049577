"""The ``gridrl`` command line (typer).

Commands parse arguments and call library functions; no logic lives here that a Python user
could not reach. A :class:`~gridrl.errors.GridrlError` (a user's mistake: unknown feeder,
malformed spec, corrupt checkpoint, …) is printed as one red line and exits with code 2, never
as a traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from gridrl.errors import GridrlError

app = typer.Typer(
    name="gridrl",
    help="Active voltage control on distribution feeders with decentralized multi-agent RL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
feeders_app = typer.Typer(help="List the feeder library, or show one feeder.", invoke_without_command=True)
bench_app = typer.Typer(help="Benchmarks against pandapower, lightsim2grid, power-grid-model.", no_args_is_help=True)
app.add_typer(feeders_app, name="feeders")
app.add_typer(bench_app, name="bench")

# piped output (CI logs, files) gets wide tables instead of 80 columns
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one red line on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def user_errors(fn):
    """Turn user errors into one line and exit code 2 (and Ctrl-C into exit 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GridrlError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; finished work is kept and a re-run resumes", 130) from None

    return wrapper


def print_table(rows: list[dict], title: str | None = None) -> None:
    """A list of dicts as a rich table on stdout."""
    if not rows:
        console.print("(nothing)")
        return
    table = Table(title=title, show_lines=False)
    for key in rows[0]:
        table.add_column(str(key), justify="right" if isinstance(rows[0][key], int | float) else "left")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# --------------------------------------------------------------------------------------------
# feeders
# --------------------------------------------------------------------------------------------


@feeders_app.callback()
@user_errors
def feeders(ctx: typer.Context) -> None:
    """Print the feeder library: name, buses, lines, agents, PV peak over load, source."""
    if ctx.invoked_subcommand is not None:
        return
    from gridrl.grid.feeder import list_feeders, load_feeder

    rows = []
    for name in list_feeders():
        s = load_feeder(name).summary()
        rows.append({k: s[k] for k in ("name", "buses", "lines", "trafos", "agents", "load_mw",
                                        "pv_peak_mw", "pv_to_load", "source")})
    print_table(rows, title="gridrl feeders")


@feeders_app.command("show")
@user_errors
def feeders_show(
    name: Annotated[str, typer.Argument(help="Feeder name (see `gridrl feeders`) or path to a spec .toml.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML map to write (default: reports/feeders/NAME.html).")] = None,
) -> None:
    """Details of one feeder, and a self-contained HTML map with zones coloured and inverters marked."""
    from gridrl.grid.feeder import load_feeder
    from gridrl.grid.plot import feeder_map
    from gridrl.io import write_html

    feeder = load_feeder(name)
    s = feeder.summary()
    for k, v in s.items():
        console.print(f"[bold]{k:>12}[/]  {v}", highlight=False)
    spec = feeder.spec
    console.print(f"[bold]{'band':>12}[/]  {spec.voltage.v_min_pu}–{spec.voltage.v_max_pu} p.u.", highlight=False)
    console.print(f"[bold]{'days':>12}[/]  {len(feeder.days('train'))} train, {len(feeder.days('test'))} test "
                  f"(every {spec.split.test_every}th day from day {spec.split.test_offset} held out)", highlight=False)
    deg = feeder.adjacency.sum(1)
    console.print(f"[bold]{'agent graph':>12}[/]  {int(feeder.adjacency.sum() // 2)} edges, degree "
                  f"{deg.min()}–{deg.max()}, diameter {int(feeder.hop_distance.max())} hops", highlight=False)
    if spec.base_case:
        console.print(f"[bold]{'base case':>12}[/]  published {spec.base_case.loss_kw} kW loss, "
                      f"min {spec.base_case.min_vm_pu} p.u.", highlight=False)
    out = out or Path("reports") / "feeders" / f"{feeder.name}.html"
    write_html(feeder_map(feeder), out)
    console.print(f"map written to {out}")


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def main() -> None:  # pragma: no cover - console script
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
