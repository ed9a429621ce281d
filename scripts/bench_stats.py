"""Shared by the benchmark scripts: reading `herald bench --json` results and printing the
median of the repetitions, with the range in brackets, as a Markdown table."""
import statistics

k = lambda v: f"{v / 1000:.0f} k" if v < 1e6 else f"{v / 1e6:.2f} M"
us = lambda v: f"{v:.0f}"
f2 = lambda v: f"{v:.2f}"
kb = lambda v: f"{v / 1000:.2f}"


def stat(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    return f"{fmt(med)} [{fmt(min(values))}–{fmt(max(values))}]" if len(values) > 1 else fmt(med)


def print_table(title, columns, headers, rows, runs):
    """rows: (label, run name, getter, format); runs: {(run name, column): [result, ...]}."""
    print(f"| {title} | " + " | ".join(headers) + " |")
    print("|---|" + "---|" * len(columns))
    for label, name, get, fmt in rows:
        cells = []
        for column in columns:
            vals = []
            for r in runs.get((name, column), []):
                try:
                    vals.append(get(r))
                except (KeyError, TypeError):
                    pass
            cells.append(stat(vals, fmt))
        print(f"| {label} | " + " | ".join(cells) + " |")
