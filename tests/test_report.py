"""`reparam report` on run folders: metrics, curves and the identity variance plot (RepOpt fig. 4)."""

import pytest

from reparam.app.report import write_report
from reparam.app.train import fit, resolve_config


@pytest.mark.slow
def test_report_plots_identity_variance_for_models_with_identity_paths(tmp_path):
    runs = []
    for name in ("repvgg_a0", "vgg_a0"):
        out = tmp_path / name
        fit(
            resolve_config(
                "basic",
                {
                    "model": name,
                    "data": "synthetic:48",
                    "epochs": 1,
                    "batch_size": 16,
                    "threads": 1,
                    "out": str(out),
                },
            ),
            progress=False,
        )
        runs.append(out)
    report = write_report(runs, tmp_path / "report")
    text = report.read_text()
    section = text.split("## Identity variance ratio per block")[1]
    assert "| repvgg_a0 | 17 |" in section  # 17 RepVGG-A0 blocks have an identity branch
    assert "| vgg_a0 |" not in section  # the plain VGG has none
    assert (tmp_path / "report" / "identity_variance.png").stat().st_size > 0
