"""The dynamics plot's bands stay inside the range of the panel's data: a t-band over few seeds at the tail
(t 12.7 for two seeds) ran to -5 and +7 where the data lie in 0-2, and flattened the panel."""

from __future__ import annotations

import pandas as pd

from rlsd_harness.analysis import plots


def test_bands_are_clipped_to_the_panel_data(tmp_path, monkeypatch):
    rows = []
    for seed, tail in ((0, 0.2), (1, 1.9)):  # the seeds agree early and split at the tail
        for step in range(1, 6):
            value = 1.0 if step < 5 else tail
            rows.append({"method": "grpo", "seed": seed, "status": "finished", "rollout_step": step,
                         "actor/entropy": value, "rollout/reward": 0.5})
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, dpi: figures.append(fig))
    plots.plot_dynamics(pd.DataFrame(rows), ["grpo"], tmp_path / "dynamics.png")
    ax = next(a for a in figures[0].axes if a.get_title().startswith("policy entropy"))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() >= 0.2 - 1e-9 and band.max() <= 1.9 + 1e-9, (band.min(), band.max())
    low, high = ax.get_ylim()
    assert low > -0.5 and high < 2.5, (low, high)  # the panel shows the data, not the band's blow-up
