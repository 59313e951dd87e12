"""The bench report's explanations of missed post targets (pure: no reactor)."""

from __future__ import annotations

from nous_twisted.bench import report
from nous_twisted.bench.report import EXPLANATIONS, explanation, targets


def _labels() -> list[str]:
    return [t.label for t in targets({}, "httptools 0.9.0")]


def test_every_explanation_names_a_real_target() -> None:
    """An explanation whose target was renamed would never be shown."""
    labels = _labels()
    for key in EXPLANATIONS:
        assert any(label.split(" (")[0] == key or label.split(":")[0] == key for label in labels), key


def test_every_post_target_the_issue_lists_as_missed_has_an_explanation() -> None:
    wanted = [
        "small_post, agent backend: CPU/request vs raw Agent (<= 0.85x)",
        "parallel_50, agent backend: CPU/request vs raw Agent (<= 0.85x)",
        "small_post, agent backend: CPU/request vs aiohttp (<= 1.25x)",
        "small_post_tls, agent backend: CPU/request vs raw Agent (<= 0.75x)",
        "posts at c=10, agent backend: CPU/request vs aiohttp (<= 1.40x)",
        "posts at c=100, agent backend: CPU/request vs aiohttp (<= 1.40x)",
        "posts at c=10, treq backend: CPU/request vs agent backend (<= 1.20x)",
        "posts at c=100, treq backend: CPU/request vs agent backend (<= 1.20x)",
    ]
    labels = _labels()
    for label in wanted:
        assert label in labels, label
        why = explanation(label)
        assert why and len(why) > 80, label


def test_explanation_prefers_the_full_label_then_the_row() -> None:
    old = dict(EXPLANATIONS)
    try:
        EXPLANATIONS.clear()
        EXPLANATIONS["x, agent backend"] = "row"
        EXPLANATIONS["x, agent backend: CPU/request vs y"] = "full"
        assert explanation("x, agent backend: CPU/request vs y (<= 1.00x)") == "full"
        assert explanation("x, agent backend: CPU/request vs z (<= 1.00x)") == "row"
        assert explanation("w, agent backend: CPU/request vs z (<= 1.00x)") is None
    finally:
        EXPLANATIONS.clear()
        EXPLANATIONS.update(old)
    assert report.EXPLANATIONS is EXPLANATIONS
