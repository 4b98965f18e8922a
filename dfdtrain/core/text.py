"""Numbers for people: one way to print a metric on the console, in tables and in messages."""

import math
import numbers


def format_number(value):
    """A number for people on the console: 4 decimals (0.4444, 12.3457), 4 significant digits where decimals
    would hide it (1.235e-05); ints as they are. Files (metrics.jsonl, report.json) keep full precision."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if value != 0 and math.isfinite(value) and not 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.4f}"


def format_fixed(value, digits=4):
    """A number in a table cell or a report line: always ``digits`` decimals (0.4440), so a column's numbers line
    up; ``-`` where the value is undefined (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"
