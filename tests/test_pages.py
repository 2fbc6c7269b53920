"""The reviewers' pages escape what comes from data, once, after any shortening."""

from __future__ import annotations

from monitoring.pages import shorten
from monitoring.summary import html_block

HOSTILE = '<script>alert("x")</script> & "quotes"'


def verdict(**changes) -> dict:
    return {
        "status": "drift",
        "model_tag": "transferops-classifier:abc",
        "window_size": 200,
        "reference_size": 500,
        "checked_at": "2026-11-29T00:00:00+00:00",
        "reasons": [HOSTILE],
        "shift_location": "early",
        "tests": {},
        "bias": {
            "gaps": [
                {
                    "group": HOSTILE,
                    "metric": "accuracy",
                    "interval": [-0.2, -0.1],
                    "current": -0.15,
                    "reference": 0.0,
                    "n": 40,
                    "alarm": True,
                }
            ],
            "skipped": [],
        },
    } | changes


def test_hostile_text_is_escaped_in_the_drift_summary() -> None:
    page = html_block(verdict(), [])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#34;quotes&#34;" in page
    assert page.count("ALARM") == 1


def test_long_text_is_shortened_before_it_is_escaped() -> None:
    short = shorten("&" * 400, 21)
    assert short == "&" * 18 + "..."
    page = html_block(verdict(reasons=[short]), [])
    assert "&amp;" * 18 + "..." in page, "whole entities only"
