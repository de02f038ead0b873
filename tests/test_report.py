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


def test_training_curves_of_several_runs_in_one_plot(tmp_path, monkeypatch):
    """One column of several logs (the demo's validation top-1): one line per run, named by the
    run; a log without that column draws nothing."""
    from reparam.app import report

    lines = []

    class Axis:
        def plot(self, x, y, **kwargs):
            lines.append((kwargs["label"], list(x), list(y)))

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    class Figure:
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    class Pyplot:
        def subplots(self, rows, columns, **kwargs):
            return Figure(), [[Axis() for _ in range(columns)]]

        def close(self, figure):
            pass

    logs = {}
    for name, top1 in (("a", ("0.5", "0.75")), ("b", ("0.25", ""))):
        logs[name] = tmp_path / f"{name}.csv"
        logs[name].write_text(f"epoch,train_loss,top1\n1,2.0,{top1[0]}\n2,1.0,{top1[1]}\n")
    monkeypatch.setattr(report, "pyplot", Pyplot)
    path = report.plot_training_curves(logs, tmp_path / "top1.png", columns=["top1"])
    assert path == tmp_path / "top1.png"
    assert [label for label, _, _ in lines] == ["a", "b"]
    assert lines[0][1:] == ([1.0, 2.0], [50.0, 75.0])
    assert lines[1][2][0] == 25.0 and lines[1][2][1] != lines[1][2][1]  # empty: NaN
    assert report.plot_training_curves(logs, tmp_path / "x.png", columns=["val_loss"]) is None
