"""The figures read correctly: where the axes start, how log axes are labelled, that the forget and
retain figures of a pair share their axes, and that the two layer numberings cannot be confused
(weight plots count decoder layers from 0; activation plots use transformers' hidden_states index,
0 = embeddings, i = output of decoder layer i - 1)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import plot_activation_norms as pan  # noqa: E402
import plot_param_stats as pps  # noqa: E402


def per_layer(values_attn, values_mlp) -> pd.DataFrame:
    rows = []
    for layer, (a, m) in enumerate(zip(values_attn, values_mlp)):
        rows += [{"layer": layer, "group": "attn", "value": a}, {"layer": layer, "group": "mlp", "value": m}]
    return pd.DataFrame(rows)


def labelled_ticks(ax, axis="y") -> list[float]:
    """Tick positions inside the view that carry a non-empty label (after drawing)."""
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_position()[1 if axis == "y" else 0] for t in ticks
            if t.get_text() and lo <= t.get_position()[1 if axis == "y" else 0] <= hi]


def test_layer_locality_axis_starts_at_zero():
    fig = pps.figure_by_layer(per_layer([0.30, 0.31, 0.35], [0.4, 0.5, 0.45]), "value", "‖ΔW‖_F", "t")
    assert fig.axes[0].get_ylim()[0] == 0 and fig.axes[0].get_ylim()[1] >= 0.5
    plt.close(fig)


@pytest.mark.parametrize("ranks", [[1.2, 1.3, 1.6], [1.0, 30.0, 300.0], [2.0, 40.0, 9e4]])
def test_log_axes_have_several_labelled_ticks(ranks):
    """Under a decade, a few decades, and beyond four: at least three numbers on the axis."""
    fig = pps.figure_by_layer(per_layer(ranks, ranks[::-1]), "value", "stable rank", "t", log=True, reference=1.0)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    ticks = labelled_ticks(ax)
    assert len(ticks) >= 3, ticks
    assert ax.get_ylim()[0] <= 1.0 <= ax.get_ylim()[1]             # the rank-1 reference stays in view
    plt.close(fig)


def activation_table(forget_spread: float) -> pd.DataFrame:
    """Forget norms spanning ``forget_spread`` (log-worthy when > 100), retain norms nearly flat."""
    rows = []
    for layer in range(5):
        for split, scale in (("forget", forget_spread ** (layer / 4)), ("retain", 1.0 + 0.1 * layer)):
            rows.append({"layer": layer, "split": split, "model_a_norm_L1": 10 * scale, "model_a_norm_L2": scale,
                         "model_b_norm_L1": 11 * scale, "model_b_norm_L2": 1.1 * scale,
                         "mean_dh_L1": 0.5 + layer, "mean_dh_L2": 0.05 * (layer + 1)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("spread", [1000.0, 2.0])
def test_forget_and_retain_norm_figures_share_their_axes(spread):
    df = activation_table(spread)
    axes = pan.norm_axes(df)
    figs = {split: pan.plot_norms(df, split, "x", "A", "B", axes) for split in ("forget", "retain")}
    for panel in (0, 1):
        f_ax, r_ax = figs["forget"].axes[panel], figs["retain"].axes[panel]
        assert f_ax.get_yscale() == r_ax.get_yscale() == ("log" if spread > 100 else "linear")
        assert f_ax.get_ylim() == pytest.approx(r_ax.get_ylim())
        if spread > 100:
            assert len(labelled_ticks(f_ax)) >= 3
    # make_plots draws the pair on these shared axes (not one kind of axis per split)
    assert pan.plot_norms(df, "retain", "x", "A", "B").axes[0].get_yscale() == figs["forget"].axes[0].get_yscale()
    for fig in figs.values():
        plt.close(fig)


def test_activation_diff_axis_starts_at_zero():
    fig = pan.plot_diffs(activation_table(2.0), "x", "A", "B")
    assert all(ax.get_ylim()[0] == 0 for ax in fig.axes if ax.get_ylabel())
    plt.close(fig)


def secondary_label(ax) -> str:
    return " ".join(child.get_xlabel() for child in ax.child_axes)


def test_both_layer_numberings_are_on_every_figure():
    fig = pps.figure_by_layer(per_layer([0.1, 0.2, 0.3], [0.3, 0.2, 0.1]), "value", "y", "t")
    ax = fig.axes[0]
    assert "decoder layer" in ax.get_xlabel() and "hidden_states index = layer + 1" in ax.get_xlabel()
    assert "hidden_states index" in secondary_label(ax)
    top = ax.child_axes[0]
    assert top.get_xticks().tolist() == [1, 2, 3]                  # decoder layers 0, 1, 2 = hidden_states 1, 2, 3
    plt.close(fig)
    fig = pan.plot_norms(activation_table(2.0), "forget", "x", "A", "B")
    for ax in fig.axes:
        if ax.get_ylabel():
            assert ax.get_xlabel().startswith("hidden_states index") and "decoder layer i − 1" in ax.get_xlabel()
            assert "decoder layer" in secondary_label(ax)
    plt.close(fig)
