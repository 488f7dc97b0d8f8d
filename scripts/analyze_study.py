"""Analyze a comparison study: each optimizer's speedup over AdamW, with intervals and figures.

    python scripts/analyze_study.py runs/<study>                  # -> runs/<study>/analysis/
    python scripts/analyze_study.py runs/<study> --unit tokens --out docs/results/<study>
    python scripts/analyze_study.py --wandb-project ENTITY/PROJECT --wandb-group <study> --out DIR

Runs are every folder below STUDY_DIR holding a metrics.jsonl (docs/CONTRACTS.md); unfinished
runs are left out with a warning. Writes report.md and one PNG per figure, prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from study.comparison import analyze  # noqa: E402
from study.plots import write_all_plots  # noqa: E402
from study.report import render_report, speedup_table, verdict, wall_clock_caveats  # noqa: E402
from study.runs import UNITS, load_study, load_wandb_study  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", nargs="?", type=Path, help="folder holding the study's runs")
    parser.add_argument("--out", type=Path, help="output folder (default: STUDY_DIR/analysis)")
    parser.add_argument("--baseline", default="adamw", help="optim.name of the baseline")
    parser.add_argument("--unit", default="steps", choices=UNITS, help="unit of the fit's D")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap RNG")
    parser.add_argument("--wandb-project", help="read runs from W&B (ENTITY/PROJECT) instead")
    parser.add_argument("--wandb-group", help="the W&B group of the study's runs")
    parser.add_argument("--no-plots", action="store_true", help="write report.md only")
    args = parser.parse_args(argv)
    if args.wandb_project:
        if not args.wandb_group:
            parser.error("--wandb-project needs --wandb-group (the study's runs)")
        if args.out is None:
            parser.error("reading from W&B needs --out (there is no study folder to write into)")
    elif args.study_dir is None:
        parser.error("give STUDY_DIR, or --wandb-project and --wandb-group")
    if args.out is None:
        args.out = args.study_dir / "analysis"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.wandb_project:
            runs, warnings = load_wandb_study(args.wandb_project, args.wandb_group)
        else:
            runs, warnings = load_study(args.study_dir)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        analysis = analyze(runs, args.baseline, args.unit, args.resamples, args.seed)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "report.md"
    report_path.write_text(render_report(analysis, warnings))
    figures = [] if args.no_plots else write_all_plots(analysis, args.out)
    print(speedup_table(analysis))
    print()
    print(verdict(analysis))
    for note in analysis.notes:
        print(f"note: {note}")
    for caveat in wall_clock_caveats(analysis):
        print(f"wall-clock: {caveat}")
    print(f"\nwrote {report_path} and {len(figures)} figures under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
