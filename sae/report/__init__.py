"""DIR/report.html: a self-contained page of a run's plots and its feature browser."""

from sae.report.build import FEATURE_BROWSER, RECOVERY, REPORT, build_report

__all__ = ["FEATURE_BROWSER", "RECOVERY", "REPORT", "build_report"]
