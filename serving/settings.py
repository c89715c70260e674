"""The serving section: HTTP, API keys, limits, push, top-k, the dashboard's sources.

It extends the trainer's section as the serving package extends the trainer package: the serving
package's tools (``reco demo``, the loop supervisor, the fault harness, the benches) run a trainer
too, so :class:`ServingSettings` is the whole program's settings and the class ``reco`` loads.
``python -m serving.settings`` prints the README's settings table.

Examples
--------
>>> s = ServingSettings.load(env={"RECO_MAX_K": "50", "RECO_FACTORS": "8"})
>>> (s.max_k, s.factors)
(50, 8)
>>> ServingSettings.load(env={"RECO_MAX_K": "lots"})
Traceback (most recent call last):
...
streamproc.errors.ConfigError: RECO_MAX_K='lots': expected an integer
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.settings import markdown_table, setting
from trainer.settings import TrainerSettings

__all__ = ["ServingSettings"]


@dataclass(frozen=True)
class ServingSettings(TrainerSettings, section="serving"):
    """The trainer's settings plus serving's (``reco serve`` and every command that runs all roles)."""

    http_host: str = setting("127.0.0.1", "HTTP bind address of `reco serve`")
    http_port: int = setting(8000, "HTTP port of `reco serve`", min=0, max=65535)
    api_key: str = setting("", "API key for write endpoints (header X-API-Key); empty = writes refused", secret=True)
    auth_disabled: bool = setting(False, "Explicitly disable the API key check (development only)")
    read_api_key_required: bool = setting(False, "Also require the API key on read endpoints")
    max_k: int = setting(500, "Largest k a request may ask for", min=1)
    max_body_bytes: int = setting(1_000_000, "Largest HTTP request body", min=1024)
    push_enabled: bool = setting(True, "Push refreshed top-k to the recommendations topic after feedback")
    push_min_interval_s: float = setting(1.0, "At most one push per user per this many seconds", min=0)
    push_max_cpu_share: float = setting(0.25, "Largest share of one core the push thread uses; beyond it pushes wait (one per user, "
                                        "with the newest model) and reco_serving_push_backlog_users grows", min=0.01, max=1.0)
    publish_snapshots_s: float = setting(0.0, "Publish the served model as a snapshot on model-snapshots this often (s) when its version "
                                         "moved, so the trainer need not (it still does when none is younger than a third of the update "
                                         "topics' retention); set it on one replica; 0 = never", min=0)
    seen_per_user: int = setting(1000, "Items remembered per user for exclude_seen", min=0)
    ann_min_items: int = setting(50_000, "Catalogue size from which top-k uses the approximate index (serving.ann; exact below, and as fallback); 0 = never", min=0)
    ann_fetch: int = setting(200, "Approximate top-k: items fetched from the index and from the popularity order before the exact re-scoring", min=10)
    dashboard_sources: str = setting(
        "http://127.0.0.1:9101/metrics,http://127.0.0.1:9102/metrics",
        "Comma-separated /metrics URLs of the other roles that /dashboard reads (serving adds its own)",
    )


if __name__ == "__main__":
    print(markdown_table(ServingSettings))
