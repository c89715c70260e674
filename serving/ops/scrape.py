"""Reading the roles' ``/metrics`` from the tooling (benches, fault harness, their tests), with
prometheus_client's own parser, as the dashboard does (:func:`serving.dashboard.parse_metrics`).

Samples are keyed ``name`` or ``name{label="value",...}`` (labels sorted), so a sample reads as it
is written in the exposition.

Examples
--------
>>> s = samples('# TYPE x counter\\nx_total{type="b"} 2\\nx_total{type="a"} 3\\ny 1.5\\n')
>>> s
{'x_total{type="b"}': 2.0, 'x_total{type="a"}': 3.0, 'y': 1.5}
>>> metric_sum(s, "x_total"), metric_sum(s, 'x_total{type="a"}'), metric_sum(s, "z")
(5.0, 3.0, None)
"""

from __future__ import annotations

from serving.dashboard import parse_metrics

__all__ = ["samples", "scrape", "metric_sum"]


def samples(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text exposition (``_created`` samples left out)."""
    out = {}
    for (name, labels), value in parse_metrics(text).items():
        out[name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")] = value
    return out


def scrape(url: str) -> dict[str, float]:
    """:func:`samples` of a ``/metrics`` endpoint; empty when it does not answer (or not in the
    exposition format: a role still starting)."""
    import httpx

    try:
        return samples(httpx.get(url, timeout=2).text)
    except (httpx.HTTPError, ValueError):
        return {}


def metric_sum(samples: dict[str, float], name: str) -> float | None:
    """The sum of every sample of ``name`` (all label sets; or one, when ``name`` carries its
    labels); None when there is none."""
    vals = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(vals) if vals else None
