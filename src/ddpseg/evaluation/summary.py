"""Result tables printed and returned the way mmseg 0.x ``CustomDataset.evaluate`` does.

mmseg renders with ``prettytable``; :func:`render_table` draws the same default
style (centred cells, one space of padding, ``+-|`` borders) without the dependency.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np


def _cell_text(value: object) -> str:
    # str() of a Python float and of np.float64 agree (shortest repr, 'nan').
    if isinstance(value, (float, np.floating)):
        return str(float(value))
    return str(value)


def render_table(columns: Mapping[str, Sequence[object]]) -> str:
    """ASCII table with one column per ``{header: values}`` entry, in order."""
    headers = list(columns)
    cells = [[_cell_text(v) for v in columns[h]] for h in headers]
    num_rows = {len(c) for c in cells}
    if len(num_rows) > 1:
        lengths = {h: len(c) for h, c in zip(headers, cells)}
        raise ValueError(f"table columns differ in length: {lengths}")
    widths = [max([len(h)] + [len(v) for v in col]) for h, col in zip(headers, cells)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def row(texts: Sequence[str]) -> str:
        # str.center puts the odd space where prettytable does.
        return "|" + "|".join(" " + t.center(w) + " " for t, w in zip(texts, widths)) + "|"

    lines = [border, row(headers), border]
    lines += [row([col[i] for col in cells]) for i in range(num_rows.pop() if num_rows else 0)]
    lines.append(border)
    return "\n".join(lines)


def format_metric_tables(
    ret_metrics: Mapping[str, np.ndarray], class_names: Sequence[object]
) -> tuple[str, str, dict[str, float]]:
    """Per-class table, summary table and flat results from ``eval_metrics`` output.

    Values are percentages rounded to 2 decimals (NaN prints as ``nan``); the
    summary row is ``aAcc`` then ``m<metric>`` = nan-mean over classes. The flat
    dict holds ``aAcc``, ``mIoU``, ``mAcc``, ..., ``IoU.<class>``, ... as the
    rounded percentages divided by 100, as mmseg returns them.
    """
    # np.nanmean warns on an all-NaN metric and returns NaN, which is what we print.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = OrderedDict(
            (name, np.round(np.nanmean(value) * 100, 2)) for name, value in ret_metrics.items()
        )
    per_class = OrderedDict(
        (name, np.round(np.asarray(value) * 100, 2))
        for name, value in ret_metrics.items()
        if name != "aAcc"
    )
    for name, values in per_class.items():
        if values.shape != (len(class_names),):
            raise ValueError(
                f"metric {name!r} has shape {values.shape} but {len(class_names)} class "
                "names were given"
            )

    class_columns = {"Class": list(class_names), **{k: list(v) for k, v in per_class.items()}}
    class_table = render_table(class_columns)
    summary_headers = {name: (name if name == "aAcc" else "m" + name) for name in summary}
    summary_table = render_table({summary_headers[k]: [v] for k, v in summary.items()})

    flat: dict[str, float] = {summary_headers[k]: float(v) / 100.0 for k, v in summary.items()}
    for name, values in per_class.items():
        for index, class_name in enumerate(class_names):
            flat[f"{name}.{class_name}"] = float(values[index]) / 100.0
    return class_table, summary_table, flat
