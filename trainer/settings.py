"""The trainer's settings section: the model, replay, drift, update publishing, checkpoints, ranking.

Examples
--------
>>> s = TrainerSettings.load(env={"RECO_FACTORS": "8", "RECO_PARTITIONS": "2"})
>>> (s.factors, s.partitions)
(8, 2)
>>> TrainerSettings.load(env={"RECO_REPLAY_POLICY": "lifo"})
Traceback (most recent call last):
...
streamproc.errors.ConfigError: RECO_REPLAY_POLICY='lifo': must be one of reservoir, recency, per_user
"""

from __future__ import annotations

from dataclasses import dataclass

from streamproc.settings import Settings, setting

__all__ = ["TrainerSettings"]


@dataclass(frozen=True)
class TrainerSettings(Settings, section="trainer"):
    """The core settings plus the trainer's (``reco trainer``, the model, the trainer benches)."""

    factors: int = setting(32, "Latent factors per user/item", min=1, max=1024)
    learning_rate: float = setting(0.05, "SGD learning rate of the factors", min=0)
    bias_learning_rate: float = setting(0.025, "SGD learning rate of the biases", min=0)
    l2: float = setting(0.02, "L2 regularisation", min=0)
    replay_size: int = setting(50_000, "Replay buffer capacity (examples)", min=0)
    replay_ratio: float = setting(0.0, "Replayed examples learned per fresh example", min=0)
    replay_policy: str = setting("reservoir", "reservoir, recency or per_user", choices=("reservoir", "recency", "per_user"))
    drift_detector: str = setting("adwin", "adwin or page_hinkley", choices=("adwin", "page_hinkley"))
    update_interval_ms: float = setting(200.0, "Publish a model update at least this often while learning (ms)", min=1)
    update_max_examples: int = setting(5000, "... or after this many examples", min=1)
    checkpoint_dir: str = setting("checkpoints", "Directory of trainer checkpoints")
    checkpoint_interval_s: float = setting(10.0, "Checkpoint this often (s), or 20x the last write time where longer; bounds re-learning after a crash", min=0.1)
    row_ttl_s: float = setting(0.0, "Expire users/items inactive this long (s); 0 = never", min=0)
    erasure_tombstones: int = setting(100_000, "Erasures remembered (as salted hashes) to drop older events of an erased id that arrive late", min=1)
    seed: int = setting(42, "Random seed")
    rank_window: int = setting(20, "Ranking: a user's latest feedback items that pair up and score neighbours", min=1, max=1000)
    rank_popularity: float = setting(0.2, "Ranking: weight of recent popularity in the served score", min=0)
    rank_mf: float = setting(0.5, "Ranking: weight of the factor model in the served score", min=0)
    rank_knn: float = setting(1.0, "Ranking: weight of the sequential co-occurrence part in the served score", min=0)
    rank_sample: float = setting(0.01, "Share of positive feedback ranked against the full catalogue for live HR/NDCG@10", min=0, max=1)
