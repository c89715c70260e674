"""The trainer's online model: a hybrid factorization with text, learned by per-event SGD.

Score of user ``u`` for item ``i``::

    global_mean + b_u + b_i + (p_u + t_u) · (q_i + x_i W)

``p_u``/``q_i`` are latent factors, ``b_u``/``b_i`` biases, ``x_i`` the running mean of the
comment embeddings of item ``i`` (384-d, L2-normalised), ``W`` a learned projection of text into
the factor space and ``t_u`` the running mean of the user's projected comment embeddings. An item
known only from comments therefore still has a vector (``x_i W``) and a bias (its comments train it
through the sentiment head), so it can be recommended.

Signals
-------
* explicit ratings, and comments that carry a rating: squared loss (also train the sentiment head,
  a linear head on the comment embedding that predicts the rating);
* comments without a rating: target = the sentiment head's rating estimate blended with the
  factor prediction by the head's learned share (as for rated comments, below), at reduced weight
  (``sentiment_weight``), once the head has seen ``sentiment_min`` rated comments — a head that
  reads little into a text (share ~0) leaves the factors' view, one that reads reviews well leads;
* clicks: BPR (pairwise logistic) against ``n_negatives`` items sampled uniformly.

Every example is predicted before it is learned, in stream order: ids are mapped to rows in Python
(dict lookups, arrays grown by doubling), then one compiled (numba) call per batch,
:func:`trainer._kernel.learn`, runs the sequential predict-then-learn loop over named tables of the
model's arrays, replayed examples interleaved per ``replay_ratio``.

Predictions returned by :meth:`HybridMF.learn_batch`: the clipped rating-scale prediction for
ratings; for a rated comment, once the head is trained, a blend of that prediction and the head's
estimate from the comment's own text (the head's share learned online from the blend's error); the
same blend for unrated comments (their target; the factor prediction until the head is trained); for clicks a
score in [0, 1], the fraction of ``RANK_CANDIDATES`` sampled items the clicked item outscores
(``rank = round((1 - score) * RANK_CANDIDATES)``, see :mod:`trainer.prequential`).

Examples
--------
>>> m = HybridMF(n_factors=4, seed=1)
>>> for _ in range(20):
...     m.learn_one("alice", "matrix", 5.0)
...     m.learn_one("alice", "notebook", 1.0)
>>> m.predict_one("alice", "matrix") > m.predict_one("alice", "notebook")
True
>>> m.n_users, m.n_items
(1, 2)
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Any

import numpy as np

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_ITEM, KIND_RATING, ExampleBatch
from trainer import _kernel
from trainer._kernel import Examples, ItemTable, Params, SharedState, UserTable
from trainer.cooc import SequentialKNN
from trainer.feedback import ItemFeedback
from trainer.replay import POLICIES, ReplayBuffer
from trainer.scoring import RankWeights, log_popularity, popularity_part, score_items
from trainer.settings import TrainerSettings

__all__ = ["HybridMF", "RANK_CANDIDATES", "warm_up"]

RANK_CANDIDATES = 99  # sampled non-clicked items a click is ranked against (prequential hit/NDCG@10)
_STATE_VERSION = 3
_LL_KEEP = 1.0 - 1.0 / 5_000  # memory of the popularity horizons' running log-likelihood (scored events: 20k events)
KNN_GAINS = (0.0, 0.25, 0.5, 1.0, 2.0)  # candidate weights of the co-occurrence part for young profiles
MF_GAINS = (0.0, 0.5, 1.0)  # ... and of the factor part
_GAIN_BUCKETS = 5  # profiles of 1, 2, 3, 4 feedback events (learned) and 5+ (fixed at 1)
_GAIN_KEEP = 0.998  # memory of the per-bucket NDCG@10 sums (events of young profiles)
_GAIN_PRIOR = 0.5  # NDCG@10 credit the default gain starts with: the data must outweigh it
# Learning the young profiles' gains ranks an item among all items under 15 gain pairs per event
# (_learn_gains; scoring every item once per pair it was 96 % of the learning time where most events
# come from new users, 100k users x 10k items, synthetic: 3,400 events/s; gain_ranks now scores each
# item 3 times, 22 -> 1.2 ms at 100k items), and it is budgeted in tokens: each event earns _GAIN_TOKENS_PER_EVENT, one gain
# update costs one token per _GAIN_TOKEN_ITEMS items it scores, at most _GAIN_TOKENS_MAX are saved
# for bursts of new users. It never binds on ml-latest-small (2.4 % young events) nor on small
# catalogues (the Yelp sample's 36 items: with a one-token floor HR@10 lost 1.3 %).
_GAIN_TOKENS_PER_EVENT = 1 / 32
_GAIN_TOKEN_ITEMS = 10_000
_GAIN_TOKENS_MAX = 64.0
# The live ranking sample (``rank_sample`` < 1: the trainer's HR/NDCG@10 metrics) scores every item
# too; at 1M users x 100k items x 2,000 events/s its 1 % of positive events with the per-batch
# inputs it needs took ~12 % of the trainer. Budgeted like the gains: this many tokens per event,
# one per _GAIN_TOKEN_ITEMS items ranked (at 100k items ~3 ranked events/s at 2,000 events/s; at
# 10k items it never binds, a 1 % sample asks ~1/150 per event). A full evaluation (1.0) is not.
_RANK_TOKENS_PER_EVENT = 1 / 64
_LP_REBASE = 1e6  # events between moves of the log-popularity reference (at a full export)
_LL_SWITCH = 1.25  # nats (on scored events) a horizon must lead by before the served one switches (no flapping)


# ---------------------------------------------------------------------------------- model
def gain_ranks(pop: np.ndarray, mf: np.ndarray, rows: np.ndarray, vals: np.ndarray, i: int, top: int = 10) -> np.ndarray:
    """Rank of item ``i`` under every (co-occurrence gain, factor gain) pair, in the order
    ``KNN_GAINS`` x ``MF_GAINS``: item x scores ``pop[x] + g_mf * mf[x]``, plus ``g_knn * vals`` for
    the candidate ``rows`` (a repeated row: its last value); rank = items scored higher + half the
    other items scored the same. Ranks of ``top`` or more come back as ``inf`` (NDCG@10 needs no
    more).

    Exact, without scoring the whole catalogue once per pair: an item outside ``rows`` scores the
    same under every co-occurrence gain, so per factor gain one partition finds the ``top`` best of
    them, and only a score that reaches those needs them counted (all items on a tie with the
    ``top``-th score).
    """
    rows, last = np.unique(rows[::-1], return_index=True)
    vals = vals[::-1][last]
    gk = np.array(KNN_GAINS)
    at = np.searchsorted(rows, i)
    v_i = vals[at] if at < len(rows) and rows[at] == i else 0.0
    out = np.full((len(KNN_GAINS), len(MF_GAINS)), np.inf)
    n, n_rest = len(pop), len(pop) - len(rows)
    k = min(top, n_rest)
    for j, g in enumerate(MF_GAINS):
        base = pop + g * mf
        cand = base[rows][None, :] + gk[:, None] * vals[None, :]  # (pairs, candidates)
        t = base[i] + gk * v_i
        gt_c = np.count_nonzero(cand > t[:, None], axis=1)
        eq_c = np.count_nonzero(cand == t[:, None], axis=1)
        rest = base.copy()
        rest[rows] = -np.inf  # placeholders: the candidates were counted above
        best = np.partition(rest, n - k)[n - k:] if k else rest[:0]
        kth = best.min() if k else -np.inf  # the k-th best score outside the candidates
        for q, tq in enumerate(t.tolist()):
            if k == top and tq < kth:
                continue  # ``top`` items outside the candidates score higher
            gt = np.count_nonzero(best > tq)  # every item above the k-th best is among the best
            eq = np.count_nonzero(best == tq) if tq > kth else np.count_nonzero(rest == tq) - (len(rows) if tq == -np.inf else 0)
            r = gt + gt_c[q] + 0.5 * (eq + eq_c[q] - 1)
            if r < top:
                out[q, j] = r
    return out.ravel()


class HybridMF:
    """Hybrid factorization (biases, factors, text projection) learned online, event by event.

    Parameters
    ----------
    n_factors
        Latent factors per user/item.
    lr, bias_lr
        SGD learning rates of the factors and of the biases.
    l2
        L2 regularisation of the factors (``l2_bias`` for the biases).
    text_dim
        Dimension of the comment embeddings.
    rating_min, rating_max
        Rating scale: predictions are clipped to it.
    replay_size, replay_ratio, replay_policy
        Replay buffer capacity, replayed examples learned per fresh example, and sampling policy
        (see :mod:`trainer.replay`).
    n_negatives
        Sampled negative items per click (BPR).
    row_ttl_s
        Users/items not seen for this long (event time, seconds) are expired; 0 = never.
    seed
        Seeds the factor initialisation, negative sampling and replay.
    l2_bias, init_std
        L2 of the biases; standard deviation of new rows' factors.
    text_lr, sentiment_lr, sentiment_weight, sentiment_min
        Step of the text projection ``W``; step of the sentiment head; weight of sentiment-derived
        targets; rated comments the head must have seen before its targets are used.
    sentiment_ridge
        > 0: the sentiment head is the exact ridge regression (this L2) of the rated comments' rating
        on their embedding, updated per comment by recursive least squares (on 1,340 Yelp
        reviews: RMSE 0.85 on the later half, SGD at ``sentiment_lr`` 0.92, the mean 1.00); 0: SGD.
    implicit_lr
        Step of the BPR click updates.
    popularity_half_life_s
        Half-life (event time) of the exported ``item_popularity`` counts.
    bias_shrink, factor_boost
        Young rows: bias step ``max(2 bias_lr, 1 / (n + bias_shrink))`` (a shrunk running mean of
        residuals), factor step ``lr (1 + factor_boost / sqrt(n + 1))``; ``n`` = the row's examples.
        On ml-latest-small these took RMSE from 0.865 (river's BiasedMF setup) to 0.854.
    drift_forget, drift_lr_boost, drift_boost_events, drift_replay_recent
        :meth:`on_drift` reaction (see there).
    knn_window, knn_decay, knn_pair_decay, knn_alpha, knn_beta, knn_candidates
        The sequential co-occurrence part (:class:`trainer.cooc.SequentialKNN`).
    rank_knn, rank_popularity, rank_mf
        Blend weights of the served score (:func:`trainer.scoring.score_items`).
    click_weight, dislike_weight, like_floor, neutral_rating
        Signed feedback strength (see :meth:`_preference`); ``neutral_rating`` defaults to the
        middle of the rating scale.
    popularity_half_lives
        Event-clock half-lives of the popularity counts; the one served is learned (see
        :attr:`popularity_horizon`).
    rank_sample, positive_rating
        Share of positive events ranked against the full catalogue for the live HR/NDCG@10
        (``last_ranks``); ratings at or above ``positive_rating`` (default ``rating_max - 1``) are
        positive.
    """

    def __init__(self, n_factors: int = 32, lr: float = 0.05, bias_lr: float = 0.025, l2: float = 0.02,
                 text_dim: int = 384, rating_min: float = 0.5, rating_max: float = 5.0, replay_size: int = 50_000,
                 replay_ratio: float = 0.0, replay_policy: str = "reservoir", n_negatives: int = 4,
                 row_ttl_s: float = 0.0, seed: int = 42, *, l2_bias: float = 0.0, init_std: float = 0.05,
                 text_lr: float = 0.05, sentiment_lr: float = 0.05, sentiment_weight: float = 0.5,
                 sentiment_min: int = 5, sentiment_ridge: float = 1.0, implicit_lr: float = 0.02, popularity_half_life_s: float = 7 * 86_400.0,
                 bias_shrink: float = 5.0, factor_boost: float = 2.0, drift_forget: float = 0.0, drift_lr_boost: float = 1.0, drift_boost_events: int = 5_000, drift_replay_recent: bool = True,
                 knn_window: int = 20, knn_decay: float = 0.85, knn_pair_decay: float = 0.95, knn_alpha: float = 0.3,
                 knn_beta: float = 0.5, knn_candidates: int = 50, rank_knn: float = 1.0, rank_popularity: float = 0.2,
                 rank_mf: float = 0.5, click_weight: float = 0.5, dislike_weight: float = 0.5, like_floor: float = 0.5,
                 neutral_rating: float | None = None, popularity_half_lives: tuple[float, ...] = (100.0, 300.0, 1_000.0, 3_000.0, 10_000.0, 30_000.0),
                 rank_sample: float = 0.01, positive_rating: float | None = None) -> None:
        for name, size in (("n_factors", n_factors), ("text_dim", text_dim)):
            if int(size) < 1:
                raise ValueError(f"{name}={size!r}: must be >= 1")
        for name, value in (("lr", lr), ("bias_lr", bias_lr), ("l2", l2), ("l2_bias", l2_bias), ("replay_ratio", replay_ratio),
                            ("row_ttl_s", row_ttl_s), ("init_std", init_std), ("text_lr", text_lr),
                            ("sentiment_lr", sentiment_lr), ("sentiment_weight", sentiment_weight), ("sentiment_ridge", sentiment_ridge),
                            ("implicit_lr", implicit_lr), ("n_negatives", n_negatives), ("replay_size", replay_size),
                            ("drift_boost_events", drift_boost_events), ("sentiment_min", sentiment_min),
                            ("rank_knn", rank_knn), ("rank_popularity", rank_popularity), ("rank_mf", rank_mf),
                            ("click_weight", click_weight), ("dislike_weight", dislike_weight), ("like_floor", like_floor)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r}: must be a finite number >= 0")
        if rating_min >= rating_max:
            raise ValueError(f"rating_min={rating_min!r} must be below rating_max={rating_max!r}")
        if replay_policy not in POLICIES:
            raise ValueError(f"replay_policy={replay_policy!r}: must be one of {', '.join(POLICIES)}")
        if not 0 <= drift_forget <= 1:
            raise ValueError(f"drift_forget={drift_forget!r}: must be in [0, 1]")
        if popularity_half_life_s <= 0 or drift_lr_boost <= 0:
            raise ValueError("popularity_half_life_s and drift_lr_boost must be > 0")
        if not popularity_half_lives or not all(h > 0 for h in popularity_half_lives):
            raise ValueError(f"popularity_half_lives={popularity_half_lives!r}: at least one, each > 0 (events)")
        if like_floor > 1:
            raise ValueError(f"like_floor={like_floor!r}: must be in [0, 1]")
        if not 0 <= rank_sample <= 1:
            raise ValueError(f"rank_sample={rank_sample!r}: must be in [0, 1]")
        if neutral_rating is not None and not rating_min < neutral_rating < rating_max:
            raise ValueError(f"neutral_rating={neutral_rating!r}: must lie strictly inside the rating scale {rating_min}..{rating_max}")
        self.n_factors = int(n_factors)
        self.lr = float(lr)
        self.bias_lr = float(bias_lr)
        self.l2 = float(l2)
        self.text_dim = int(text_dim)
        self.rating_min = float(rating_min)
        self.rating_max = float(rating_max)
        self.replay_size = int(replay_size)
        self.replay_ratio = float(replay_ratio)
        self.replay_policy = replay_policy
        self.n_negatives = int(n_negatives)
        self.row_ttl_s = float(row_ttl_s)
        self.seed = int(seed)
        self.l2_bias = float(l2_bias)
        self.init_std = float(init_std)
        self.text_lr = float(text_lr)
        self.sentiment_lr = float(sentiment_lr)
        self.sentiment_ridge = float(sentiment_ridge)
        self.sentiment_weight = float(sentiment_weight)
        self.sentiment_min = int(sentiment_min)
        self.implicit_lr = float(implicit_lr)
        self.popularity_half_life_s = float(popularity_half_life_s)
        self.bias_shrink = float(bias_shrink)
        self.factor_boost = float(factor_boost)
        self.drift_forget = float(drift_forget)
        self.drift_lr_boost = float(drift_lr_boost)
        self.drift_boost_events = int(drift_boost_events)
        self.drift_replay_recent = bool(drift_replay_recent)
        self.knn_window = int(knn_window)
        self.knn_decay = float(knn_decay)
        self.knn_pair_decay = float(knn_pair_decay)
        self.knn_alpha = float(knn_alpha)
        self.knn_beta = float(knn_beta)
        self.knn_candidates = int(knn_candidates)
        self.popularity_half_lives = tuple(float(h) for h in popularity_half_lives)
        self.rank_sample = float(rank_sample)
        self.positive_rating = None if positive_rating is None else float(positive_rating)
        self.rank_knn = float(rank_knn)
        self.rank_popularity = float(rank_popularity)
        self.rank_mf = float(rank_mf)
        self.click_weight = float(click_weight)
        self.dislike_weight = float(dislike_weight)
        self.like_floor = float(like_floor)
        self.neutral_rating = None if neutral_rating is None else float(neutral_rating)
        self._new_knn()  # checks its arguments before any state is built
        self._init_state()

    # ------------------------------------------------------------------ construction
    _PARAM_NAMES = ("n_factors", "lr", "bias_lr", "l2", "text_dim", "rating_min", "rating_max", "replay_size",
                    "replay_ratio", "replay_policy", "n_negatives", "row_ttl_s", "seed", "l2_bias", "init_std",
                    "text_lr", "sentiment_lr", "sentiment_weight", "sentiment_min", "sentiment_ridge", "implicit_lr",
                    "popularity_half_life_s", "bias_shrink", "factor_boost", "drift_forget", "drift_lr_boost", "drift_boost_events", "drift_replay_recent",
                    "knn_window", "knn_decay", "knn_pair_decay", "knn_alpha", "knn_beta", "knn_candidates", "rank_knn",
                    "rank_popularity", "rank_mf", "click_weight", "dislike_weight", "like_floor", "neutral_rating", "popularity_half_lives", "rank_sample", "positive_rating")

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> HybridMF:
        """Build from :class:`trainer.settings.TrainerSettings` (factors, rates, replay, TTL, seed, ranking)."""
        return cls(n_factors=settings.factors, lr=settings.learning_rate, bias_lr=settings.bias_learning_rate,
                   l2=settings.l2, rating_min=settings.rating_min, rating_max=settings.rating_max,
                   replay_size=settings.replay_size, replay_ratio=settings.replay_ratio,
                   replay_policy=settings.replay_policy, row_ttl_s=settings.row_ttl_s, seed=settings.seed,
                   knn_window=settings.rank_window, rank_popularity=settings.rank_popularity, rank_mf=settings.rank_mf,
                   rank_knn=settings.rank_knn, rank_sample=settings.rank_sample)

    def clone(self) -> HybridMF:
        """A fresh, unfitted model with the same parameters."""
        return type(self)(**self.get_params())

    def _new_knn(self) -> SequentialKNN:
        return SequentialKNN(window=self.knn_window, decay=self.knn_decay, pair_decay=self.knn_pair_decay, alpha=self.knn_alpha,
                             beta=self.knn_beta, n_candidates=self.knn_candidates)

    @property
    def rank_weights(self) -> RankWeights:
        """The blend :func:`trainer.scoring.score_items` ranks with (also sent to serving)."""
        return RankWeights(knn=self.rank_knn, popularity=self.rank_popularity, mf=self.rank_mf,
                           rating_span=self.rating_max - self.rating_min, horizon=float(self._horizon))

    def _init_state(self, cap_u: int = 256, cap_i: int = 256) -> None:
        k, dim = self.n_factors, self.text_dim
        self._knn = self._new_knn()
        self.last_ranks = np.zeros(0)  # see _rank_sampled
        self.last_sentiment = np.zeros(0)  # see _sentiment
        self._rng = np.random.default_rng(self.seed)
        # separate streams for new user and new item rows: a row's initial factors depend only on
        # the order ids first appear in their own table, so any batching gives the same model
        self._rng_u = np.random.default_rng([self.seed, 1])
        self._rng_i = np.random.default_rng([self.seed, 2])
        self._krng = np.array([(self.seed * 0x2545F4914F6CDD1D + 1) % 2**64], np.uint64)
        self._umap: dict[str, int] = {}
        self._imap: dict[str, int] = {}
        self._uids: list[str | None] = []
        self._iids: list[str | None] = []
        self._free_u: list[int] = []
        self._free_i: list[int] = []
        self._P = np.zeros((cap_u, k), np.float32)
        self._BU = np.zeros(cap_u, np.float32)
        # t_u, the running mean of the user's projected comments, only for users with comments (a
        # minority; 132 bytes each): a row of _TU_VECS (+ count in _TU_COUNTS) per user with text,
        # _TU_ROW 0 for the others (row 0 stays all zeros, so p_u + t_u needs no branch)
        self._TU_ROW = np.zeros(cap_u, np.int32)
        self._TU_VECS = np.zeros((16, k), np.float32)
        self._TU_COUNTS = np.zeros(16, np.float32)
        self._n_tu = 1  # text rows given so far (row 0 included)
        self._tu_free: list[int] = []  # text rows of dropped users, reused first
        self._SEEN_U = np.zeros(cap_u, np.float64)
        self._TOUCH_U = np.zeros(cap_u, np.bool_)
        self._CNT_U = np.zeros(cap_u, np.float32)
        self._Q = np.zeros((cap_i, k), np.float32)
        self._BI = np.zeros(cap_i, np.float32)
        self._X = np.zeros((cap_i, dim), np.float32)
        self._XN = np.zeros(cap_i, np.float32)
        self._XW = np.zeros((cap_i, k), np.float32)
        self._POP = np.zeros(cap_i, np.float32)
        self._SEEN_I = np.zeros(cap_i, np.float64)
        H = len(self.popularity_half_lives)
        self._RPOP = np.zeros((cap_i, H), np.float64)
        self._RPOPT = np.zeros(cap_i, np.float64)
        self._clock = 0.0
        self._lp_ref = 0.0
        self._POPTOT = np.zeros(H, np.float64)  # decayed mass per horizon
        self._POPLL = np.zeros(H, np.float64)  # decayed prequential log-likelihood per horizon
        # per young profile length (1..4 events) and candidate gain: decayed sum of the NDCG@10 the
        # blend would have given their positive events; starts leaning to min(1, events / 5)
        # (columns: every knn gain x mf gain pair, knn-major)
        self._GAINRR = np.zeros((_GAIN_BUCKETS, len(KNN_GAINS) * len(MF_GAINS)), np.float64)
        self._gain_tokens = _GAIN_TOKENS_MAX  # see _GAIN_TOKENS_PER_EVENT; not checkpointed (a restore starts full)
        self._rank_tokens = _GAIN_TOKENS_MAX  # see _RANK_TOKENS_PER_EVENT; likewise
        for b in range(_GAIN_BUCKETS):
            g = int(np.argmin(np.abs(np.array(KNN_GAINS) - min(1.0, (b + 1) / 5))))
            self._GAINRR[b, g * len(MF_GAINS) + MF_GAINS.index(1.0)] = _GAIN_PRIOR
        self._horizon = min(range(H), key=lambda h: abs(self.popularity_half_lives[h] - 3_000.0))  # until the data says otherwise
        self._ALIVE_I = np.zeros(cap_i, np.bool_)
        self._TOUCH_I = np.zeros(cap_i, np.bool_)
        self._CNT_I = np.zeros(cap_i, np.float32)
        self._W = (self._rng.standard_normal((dim, k)) * (self.init_std / math.sqrt(dim))).astype(np.float32)
        self._SW = np.zeros(dim, np.float32)
        self._SST = np.zeros(4, np.float64)  # sentiment head: bias, rated comments seen, sums for its share (see _learn)
        # ridge head (recursive least squares): inverse of the regularised Gram matrix of [x, 1]
        self._HP = np.eye(dim + 1, dtype=np.float64) / max(self.sentiment_ridge, 1e-9)
        self._HP[dim, dim] = 1e4  # the intercept is (almost) not shrunk
        self._GM = np.zeros(2, np.float64)  # sum, count of explicit targets
        self._lr_mult = 1.0
        self._boost_left = 0
        self._drifts = 0
        self._newest_time = 0.0
        self._last_expiry = 0.0
        self._expired_u: list[str] = []
        self._expired_i: list[str] = []
        self._erased_u: list[str] = []  # forgotten (erasure) since the last delta: never in state()
        self._erased_i: list[str] = []
        self._replay = ReplayBuffer(self.replay_size, self.replay_policy, self.seed + 1)
        self._replay_credit = 0.0
        self._empty_emb = np.zeros((0, dim), np.float32)
        self._feedback = ItemFeedback()  # per-item comment sentiment and its trend (feedback analysis)

    @property
    def n_users(self) -> int:
        return len(self._umap)

    @property
    def n_items(self) -> int:
        return len(self._imap)

    @property
    def cooc(self) -> SequentialKNN:
        """The sequential co-occurrence part (its pairs, memory)."""
        return self._knn

    @property
    def replay(self) -> ReplayBuffer:
        return self._replay

    @property
    def feedback(self) -> ItemFeedback:
        """Per-item comment sentiment, ratings and sentiment trend (exported as ``item_feedback``)."""
        return self._feedback

    # ------------------------------------------------------------------ rows
    _USER_ARRAYS = ("_P", "_BU", "_TU_ROW", "_SEEN_U", "_TOUCH_U", "_CNT_U")
    _GLOBAL_ARRAYS = ("_W", "_SW", "_SST", "_GM", "_POPTOT", "_POPLL", "_GAINRR", "_HP")
    _ITEM_ARRAYS = ("_Q", "_BI", "_X", "_XN", "_XW", "_POP", "_SEEN_I", "_ALIVE_I", "_TOUCH_I", "_CNT_I", "_RPOP", "_RPOPT")

    def _grow(self, names: tuple[str, ...], need: int) -> None:
        cap = len(getattr(self, names[0]))
        if need <= cap:
            return
        new_cap = max(need, 2 * cap)
        for name in names:
            old = getattr(self, name)
            arr = np.zeros((new_cap,) + old.shape[1:], old.dtype)
            arr[:cap] = old
            setattr(self, name, arr)

    def _alloc(self, ids: list[str], users: bool) -> None:
        """Give rows to new ids (reusing expired rows first), initialised in first-appearance order."""
        m = len(ids)
        free, names = (self._free_u, self._uids) if users else (self._free_i, self._iids)
        n_reuse = min(m, len(free))
        rows = [free.pop() for _ in range(n_reuse)] + list(range(len(names), len(names) + m - n_reuse))
        names.extend([None] * (m - n_reuse))
        for r, x in zip(rows, ids, strict=True):
            names[r] = x
        self._grow(self._USER_ARRAYS if users else self._ITEM_ARRAYS, len(names))
        idx = np.array(rows, np.intp)
        if users:
            for a in (self._BU, self._SEEN_U, self._CNT_U):
                a[idx] = 0  # (a reused row's text row went back with _drop: _TU_ROW is 0)
            self._P[idx] = self._rng_u.standard_normal((m, self.n_factors)) * self.init_std
            for r in rows[:n_reuse]:
                self._knn.forget_user(r)
            self._umap.update(zip(ids, rows, strict=True))
        else:
            for arr in (self._BI, self._XN, self._POP, self._SEEN_I, self._CNT_I, self._X, self._XW, self._RPOP, self._RPOPT):
                arr[idx] = 0
            self._Q[idx] = self._rng_i.standard_normal((m, self.n_factors)) * self.init_std
            self._ALIVE_I[idx] = True
            self._imap.update(zip(ids, rows, strict=True))

    def _give_text_rows(self, users: np.ndarray) -> None:
        """A text row (zeros) for each user row in ``users`` that has none (free rows first)."""
        users = np.unique(users[self._TU_ROW[users] == 0])
        n = len(users)
        if not n:
            return
        reuse = [self._tu_free.pop() for _ in range(min(n, len(self._tu_free)))]
        rows = np.array(reuse + list(range(self._n_tu, self._n_tu + n - len(reuse))), np.int32)
        self._n_tu += n - len(reuse)
        if self._n_tu > len(self._TU_COUNTS):
            cap = max(self._n_tu, 2 * len(self._TU_COUNTS))
            vecs, counts = np.zeros((cap, self.n_factors), np.float32), np.zeros(cap, np.float32)
            vecs[: len(self._TU_VECS)], counts[: len(self._TU_COUNTS)] = self._TU_VECS, self._TU_COUNTS
            self._TU_VECS, self._TU_COUNTS = vecs, counts
        self._TU_ROW[users] = rows

    def _user_vectors(self, rows: np.ndarray) -> np.ndarray:
        """``p_u + t_u`` (float32) of the user rows ``rows``: what a replica scores a user with."""
        return self._P[rows] + self._TU_VECS[self._TU_ROW[rows]]

    def _rows(self, ids: list[str], users: bool) -> np.ndarray:
        get = (self._umap if users else self._imap).get
        rows = list(map(get, ids))
        if None in rows:
            new = dict.fromkeys(x for x, r in zip(ids, rows, strict=True) if r is None)  # unique, in order
            self._alloc(list(new), users)
            rows = list(map(get, ids))
        return np.array(rows, np.int32)

    # ------------------------------------------------------------------ learning
    def _params(self) -> Params:
        f = float  # every float field a float, whatever was passed: another type is another compiled kernel
        return Params(lr=f(self.lr), bias_lr=f(self.bias_lr), l2=f(self.l2), l2_bias=f(self.l2_bias), rating_min=f(self.rating_min),
                      rating_max=f(self.rating_max), lr_mult=f(self._lr_mult), text_lr=f(self.text_lr),
                      sentiment_lr=0.0 if self.sentiment_ridge > 0 else f(self.sentiment_lr),  # ridge: exact per comment, not SGD
                      sentiment_weight=f(self.sentiment_weight), implicit_lr=f(self.implicit_lr),
                      popularity_tau=f(self.popularity_half_life_s / math.log(2.0)), sentiment_min=f(self.sentiment_min),
                      n_negatives=int(self.n_negatives), n_rank=RANK_CANDIDATES, bias_shrink=f(self.bias_shrink),
                      factor_boost=f(self.factor_boost), n_items=len(self._iids))

    def _tables(self) -> tuple[UserTable, ItemTable, SharedState]:
        """The kernel's named views of the model's arrays (nothing copied: it learns in place)."""
        users = UserTable(factors=self._P, bias=self._BU, text_row=self._TU_ROW, text_vecs=self._TU_VECS,
                          text_counts=self._TU_COUNTS, seen=self._SEEN_U, learned=self._CNT_U, touched=self._TOUCH_U)
        items = ItemTable(factors=self._Q, bias=self._BI, text=self._X, text_count=self._XN, text_proj=self._XW,
                          popularity=self._POP, seen=self._SEEN_I, alive=self._ALIVE_I, learned=self._CNT_I, touched=self._TOUCH_I)
        return users, items, SharedState(text_proj=self._W, head=self._SW, head_stats=self._SST, head_inv=self._HP, mean=self._GM)

    def learn_batch(self, batch: ExampleBatch) -> np.ndarray:
        """Predict then learn each example in order; returns one float64 prediction per example.

        Replayed examples (``replay_ratio``) are interleaved at random positions; they are learned
        but not predicted or returned.
        """
        n = len(batch)
        if n == 0:
            return np.zeros(0, np.float64)
        rec = batch.records
        emb = batch.embeddings
        if emb.size == 0:
            emb = self._empty_emb
        elif emb.shape[1] != self.text_dim:
            raise ValueError(f"embeddings have dimension {emb.shape[1]}, the model expects text_dim={self.text_dim}")
        kinds = np.ascontiguousarray(rec["kind"], np.uint8)
        if (kinds == KIND_ITEM).any():
            return self._learn_with_content(batch, kinds, emb)
        targets = np.ascontiguousarray(rec["target"], np.float64)
        self.last_sentiment = self._sentiment(kinds, rec["emb_row"], emb)
        self.last_ranks = self._rank_sampled(batch, kinds, targets)
        u_rows = self._rows(batch.user_ids, True)
        i_rows = self._rows(batch.item_ids, False)
        weights = np.ascontiguousarray(rec["weight"], np.float64)
        emb_rows = np.ascontiguousarray(rec["emb_row"], np.int32)
        self._give_text_rows(u_rows[(kinds == KIND_COMMENT) & (emb_rows >= 0)])  # the kernel folds these comments into t_u
        times = np.ascontiguousarray(rec["event_time"], np.float64)
        fresh = np.ones(n, np.bool_)
        n_rep = 0
        if self.replay_ratio > 0 and len(self._replay):
            self._replay_credit += n * self.replay_ratio
            n_rep = int(self._replay_credit)
            self._replay_credit -= n_rep
        if n_rep:
            rep = self._replay.sample(n_rep)
            n_rep = len(rep)
        if n_rep:
            # replayed example r is learned right after fresh example pos[r]
            pos = np.sort(self._rng.integers(0, n, n_rep))
            order = np.argsort(np.concatenate([np.arange(n) * 2, pos * 2 + 1]), kind="stable")
            cat = lambda a, b: np.concatenate([a, b.astype(a.dtype)])[order]  # noqa: E731
            u_all, i_all = cat(u_rows, rep["user"]), cat(i_rows, rep["item"])
            k_all, t_all, w_all = cat(kinds, rep["kind"]), cat(targets, rep["target"]), cat(weights, rep["weight"])
            e_all = cat(emb_rows, np.full(n_rep, -1, np.int32))
            f_all = cat(fresh, np.zeros(n_rep, np.bool_))
            tm_all = cat(times, rep["time"])
        else:
            u_all, i_all, k_all, t_all, w_all, e_all, f_all, tm_all = u_rows, i_rows, kinds, targets, weights, emb_rows, fresh, times
        out = np.empty(n, np.float64)
        stored = np.empty(n, np.float64)
        ex = Examples(users=u_all, items=i_all, kinds=k_all, targets=t_all, weights=w_all, emb_rows=e_all, fresh=f_all,
                      times=tm_all, embeddings=emb)
        _kernel.learn(ex, *self._tables(), self._params(), self._krng, out, stored)
        self._knn.learn(u_rows, i_rows, self._preference(kinds, stored), n_users=len(self._uids), n_items=len(self._iids))
        self._feedback.update(i_rows, kinds, targets, self.last_sentiment)
        self._clock = _kernel.bump_popularity(i_rows, self._RPOP, self._RPOPT, self._clock, self._pop_taus, self._POPTOT, self._POPLL,
                                       _LL_KEEP, max(len(self._imap), 1))
        best = int(np.argmax(self._POPLL))
        if best != self._horizon and self._POPLL[best] > self._POPLL[self._horizon] + _LL_SWITCH:
            self._horizon = best
        newest = float(times.max())
        if self.replay_size:
            keep = ~np.isnan(stored) | (kinds == KIND_CLICK)
            if not keep.all():
                u_rows, i_rows, kinds, stored, weights, times = (a[keep] for a in (u_rows, i_rows, kinds, stored, weights, times))
            self._replay.add_many(users=u_rows, items=i_rows, kinds=kinds, targets=stored, weights=weights, times=times)
        if self._boost_left > 0:
            self._boost_left -= n
            if self._boost_left <= 0:
                self._lr_mult = 1.0
        if newest > self._newest_time:
            self._newest_time = newest
        if self.row_ttl_s > 0 and self._newest_time - self._last_expiry >= self.row_ttl_s / 10:
            self.expire(self._newest_time)
        return out

    def _sentiment(self, kinds: np.ndarray, emb_rows: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """The sentiment head's rating-scale estimate for each comment with text (as of the batch's
        start), NaN elsewhere and until the head has seen ``sentiment_min`` rated comments."""
        out = np.full(len(kinds), np.nan)
        has = (kinds == KIND_COMMENT) & (emb_rows >= 0)
        if has.any() and self._SST[1] >= self.sentiment_min:
            raw = self.global_mean + self._SST[0] + emb[emb_rows[has]] @ self._SW
            out[has] = np.clip(raw, self.rating_min, self.rating_max)
        return out

    def _learn_with_content(self, batch: ExampleBatch, kinds: np.ndarray, emb: np.ndarray) -> np.ndarray:
        """A batch holding item-content examples (catalogue records, ``KIND_ITEM``): each gives its
        item a row and folds the content vector into the item's text profile ``x_i`` (like one
        comment), so ``x_i W`` places an item with no feedback among items with similar text; the
        other examples are learned as usual, in order around them. Predictions NaN for content."""
        out = np.full(len(kinds), np.nan)
        is_item = kinds == KIND_ITEM
        lo = 0
        sentiment = np.full(len(kinds), np.nan)
        ranks = np.full(len(kinds), np.nan)
        for hi in [*np.flatnonzero(np.diff(is_item.astype(np.int8)) != 0) + 1, len(kinds)]:
            if is_item[lo]:
                self._learn_content([batch.item_ids[k] for k in range(lo, hi)], batch.records["emb_row"][lo:hi],
                                    batch.records["event_time"][lo:hi], emb)
            else:
                part = ExampleBatch(batch.event_ids[lo:hi], batch.user_ids[lo:hi], batch.item_ids[lo:hi], batch.records[lo:hi], batch.embeddings)
                out[lo:hi] = self.learn_batch(part)
                sentiment[lo:hi], ranks[lo:hi] = self.last_sentiment, self.last_ranks
            lo = hi
        self.last_sentiment, self.last_ranks = sentiment, ranks
        return out

    def _learn_content(self, item_ids: list[str], emb_rows: np.ndarray, times: np.ndarray, emb: np.ndarray) -> None:
        ok = np.asarray(emb_rows) >= 0
        if not ok.any():
            return
        rows = self._rows([x for x, keep in zip(item_ids, ok, strict=True) if keep], False)
        vecs = emb[np.asarray(emb_rows)[ok]]
        for r, v, t in zip(rows.tolist(), vecs, np.asarray(times)[ok].tolist(), strict=True):
            self._XN[r] += 1.0
            self._X[r] += (v - self._X[r]) / self._XN[r]
            self._XW[r] = self._X[r] @ self._W
            self._SEEN_I[r] = max(self._SEEN_I[r], t)
            self._TOUCH_I[r] = True

    def _rank_sampled(self, batch: ExampleBatch, kinds: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Full-catalogue rank (0 = best) of a sample of the batch's positive events, before the
        batch is learned; NaN where not sampled. Positive: clicks, and ratings/rated comments at or
        above ``positive_rating`` (default ``rating_max - 1``). The sample is a fixed hash of
        (user, item) below ``rank_sample``, so it is the same on every run, within a budget below 1
        (:data:`_RANK_TOKENS_PER_EVENT`: large catalogues rank fewer). Every positive event of a
        user with 1-4 events also teaches :attr:`knn_gains`, within a budget (:data:`_GAIN_TOKENS_PER_EVENT`). Candidates: every live
        item except the user's last ``knn_window`` items; an item the model has not seen counts as
        rank infinity (a miss)."""
        ranks = np.full(len(kinds), np.nan)
        if not self._imap:
            return ranks
        thr = self.positive_rating if self.positive_rating is not None else self.rating_max - 1.0
        with np.errstate(invalid="ignore"):
            pos = (kinds == KIND_CLICK) | ((kinds != KIND_CLICK) & (targets >= thr))
        cut = int(self.rank_sample * 2**32)
        side = None  # the user-independent inputs, computed once per batch when first needed
        self._gain_tokens = min(_GAIN_TOKENS_MAX, self._gain_tokens + _GAIN_TOKENS_PER_EVENT * len(kinds))
        self._rank_tokens = min(_GAIN_TOKENS_MAX, self._rank_tokens + _RANK_TOKENS_PER_EVENT * len(kinds))
        gain_cost = len(self._imap) / _GAIN_TOKEN_ITEMS
        budgeted = self.rank_sample < 1.0
        for n in np.flatnonzero(pos).tolist():
            user, item = batch.user_ids[n], batch.item_ids[n]
            u = self._umap.get(user)
            sampled = zlib.crc32(f"{user}\x00{item}".encode()) < cut
            if sampled and budgeted:
                sampled = self._rank_tokens >= gain_cost
                self._rank_tokens -= gain_cost if sampled else 0.0
            young = u is not None and 0 < self._knn.events_of(u) < _GAIN_BUCKETS
            if not (sampled or young):
                continue
            i = self._imap.get(item)
            if i is None:
                if sampled:
                    ranks[n] = math.inf
                continue
            if u is not None and i in self._knn.recent_items(u):
                continue  # feedback on an item the user just acted on: not a recommendation to judge
            if young and u is not None and self._gain_tokens >= gain_cost:
                self._gain_tokens -= gain_cost
                side = side if side is not None else self._item_side()
                self._learn_gains(u, i, user, side)
            if not sampled:
                continue
            side = side if side is not None else self._item_side()
            _, s = self.rank_scores(user, side)
            if u is not None:
                s[self._knn.recent_items(u)] = -np.inf
            st = s[i]
            ranks[n] = float(np.count_nonzero(s > st)) + 0.5 * float(np.count_nonzero(s == st) - 1)
        return ranks

    @property
    def mf_gains(self) -> np.ndarray:
        """Weight of the factor part for profiles of 1, 2, 3, 4 and 5+ events (see :attr:`knn_gains`)."""
        return np.array(MF_GAINS)[np.argmax(self._GAINRR, axis=1) % len(MF_GAINS)]

    def _user_mf_gain(self, rows: np.ndarray) -> np.ndarray:
        m = self._knn.events_of_rows(rows)
        return self.mf_gains[np.clip(m, 1, _GAIN_BUCKETS) - 1].astype(np.float32)

    @property
    def knn_gains(self) -> np.ndarray:
        """Weight of the co-occurrence part for profiles of 1, 2, 3, 4 and 5+ events: for the young
        ones the gain whose blend has ranked their positive feedback best (NDCG@10, learned online;
        on some streams a user's first items say a lot about the next, on others little); 1 for
        established profiles (where it is the core of the ranking on every stream measured)."""
        return np.array(KNN_GAINS)[np.argmax(self._GAINRR, axis=1) // len(MF_GAINS)]

    def _learn_gains(self, u: int, i: int, user: str, side: dict[str, Any]) -> None:
        """Rank item ``i`` for user row ``u`` under every candidate gain; credit each gain's bucket."""
        m = self._knn.events_of(u)
        if not 0 < m < _GAIN_BUCKETS:
            return
        ni = len(self._iids)
        alive = self._ALIVE_I[:ni]
        w = self.rank_weights
        pop = side["pop_part"].copy()  # the parts of score_items, apart, to weigh them per gain
        if w.mf and "item_factors" in side:
            mf = side["item_factors"] @ self._user_vectors(np.array([u]))[0] + side["item_bias"]
            mf = mf.astype(np.float64) * (w.mf / w.rating_span)
        else:
            mf = np.zeros_like(pop)
        pop[~alive] = -np.inf
        pop[self._knn.recent_items(u)] = -np.inf
        cr, cv = self._knn.candidates(np.array([u], np.int32), n_items=ni, alive=alive, gain=np.ones(1))
        ok = cr[0] >= 0
        rows, vals = cr[0][ok], cv[0][ok].astype(np.float64) * w.knn
        b = min(m, _GAIN_BUCKETS) - 1
        self._GAINRR[b] *= _GAIN_KEEP
        ranks = gain_ranks(pop, mf, rows, vals, i)
        top = ranks < 10
        self._GAINRR[b, top] += 1.0 / np.log2(ranks[top] + 2.0)

    @property
    def _pop_taus(self) -> np.ndarray:
        return np.array(self.popularity_half_lives, np.float64) / math.log(2.0)

    @property
    def popularity_horizon(self) -> float:
        """The half-life (events) of the popularity served now: the horizon whose popularity has
        predicted the stream's next items best (decayed log-likelihood), switched with hysteresis."""
        return self.popularity_half_lives[self._horizon]

    def _preference(self, kinds: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Signed strength of each fresh example for the co-occurrence part: ratings (and comments,
        by their rating or else the sentiment head's estimate) above ``neutral_rating`` are liked,
        ``like_floor`` .. 1 growing with the rating; below it disliked, down to ``-dislike_weight``
        at ``rating_min``; clicks ``click_weight``; a comment with no usable estimate 0."""
        lo, hi = self.rating_min, self.rating_max
        mid = self.neutral_rating if self.neutral_rating is not None else 0.5 * (lo + hi)
        y = np.asarray(targets, np.float64)
        with np.errstate(invalid="ignore"):
            like = self.like_floor + (1.0 - self.like_floor) * (y - mid) / (hi - mid)
            dislike = -self.dislike_weight * (mid - y) / (mid - lo)
            w = np.where(y >= mid, like, dislike)
        w = np.where(np.isnan(y), 0.0, w)
        w = np.where(kinds == KIND_CLICK, self.click_weight, w)
        return w.astype(np.float32)

    def learn_one(self, user_id: str, item_id: str, rating: float | None = None, *, kind: int | None = None,
                  event_time: float | None = None, embedding: np.ndarray | None = None, weight: float = 1.0) -> None:
        """Learn one example (river-style): a rating, or a click (``kind=KIND_CLICK``), or a comment
        (``embedding`` given, ``rating`` optional)."""
        self.learn_batch(_one_batch(user_id, item_id, rating, kind, event_time, embedding, weight))

    def predict_one(self, user_id: str, item_id: str) -> float:
        """Clipped rating-scale prediction; unknown users/items contribute nothing but the mean."""
        mean = self._GM[0] / self._GM[1] if self._GM[1] > 0 else 0.5 * (self.rating_min + self.rating_max)
        u, i = self._umap.get(user_id), self._imap.get(item_id)
        score = mean
        if u is not None:
            score += float(self._BU[u])
        if i is not None:
            score += float(self._BI[i])
        if u is not None and i is not None:
            score += float(np.dot(self._user_vectors(np.array([u]))[0], self._item_vectors(np.array([i]))[0]))
        return float(min(max(score, self.rating_min), self.rating_max))

    def item_rows(self, item_ids: list[str]) -> np.ndarray:
        """Row of each item id (-1 for unknown ids), e.g. to index :meth:`ranking_inputs` scores."""
        get = self._imap.get
        return np.fromiter((get(x, -1) for x in item_ids), np.int64, len(item_ids))

    def item_ids_of(self, rows: np.ndarray) -> list[str | None]:
        """Item id of each row (None for a free row)."""
        return [self._iids[r] for r in np.asarray(rows).tolist()]

    def _item_vectors(self, rows: np.ndarray) -> np.ndarray:
        q = self._Q[rows].astype(np.float32, copy=True)
        has = self._XN[rows] > 0
        if has.any():
            q[has] += self._X[rows[has]] @ self._W
        return q

    # ------------------------------------------------------------------ drift, expiry
    def on_drift(self) -> None:
        """React to a detected drift.

        Every row's example count is multiplied by ``drift_forget`` (0 = all rows young again), so
        biases and factors take the larger young-row steps (``bias_shrink``, ``factor_boost``) and
        re-estimate quickly; learning rates are multiplied by ``drift_lr_boost`` (1 = off) for the
        next ``drift_boost_events`` examples; with ``drift_replay_recent`` only post-drift examples
        are replayed for that long.
        """
        self._drifts += 1
        self._CNT_U *= self.drift_forget
        self._CNT_I *= self.drift_forget
        self._lr_mult = self.drift_lr_boost
        self._boost_left = self.drift_boost_events
        if self.drift_replay_recent:
            self._replay.favour_recent(self.drift_boost_events)

    def expire(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Drop users/items not seen since ``now - row_ttl_s`` (event time); returns their ids.
        Their rows are reused by new ids; the next :meth:`export` lists them as expired."""
        self._last_expiry = now = self._newest_time if now is None else now
        if self.row_ttl_s <= 0:
            return [], []
        cut = now - self.row_ttl_s
        nu, ni = len(self._uids), len(self._iids)
        alive_u = np.array([x is not None for x in self._uids], bool)
        dead_u = np.flatnonzero(alive_u & (self._SEEN_U[:nu] < cut))
        dead_i = np.flatnonzero(self._ALIVE_I[:ni] & (self._SEEN_I[:ni] < cut))
        users, items = self._drop(dead_u, dead_i)
        self._expired_u += users
        self._expired_i += items
        return users, items

    def forget(self, users: Any = (), items: Any = ()) -> tuple[list[str], list[str]]:
        """Erase users and items: their rows are zeroed and freed, their co-occurrence ring and
        pairs, popularity and replay-buffer entries dropped; returns the ids that were known.

        The next delta :meth:`export` lists them as expired (so every replica drops them); they are
        kept out of :meth:`state` and out of full exports, so no checkpoint or snapshot written
        after this call holds the ids. What the rest of the model learned from them (shared
        weights such as item factors, the text projection and item-item pair counts) is aggregate
        and stays. A later event for the same id starts a fresh row.
        """
        dead_u = np.array([r for r in map(self._umap.get, users) if r is not None], np.intp)
        dead_i = np.array([r for r in map(self._imap.get, items) if r is not None], np.intp)
        gone_u, gone_i = self._drop(dead_u, dead_i)
        self._erased_u += gone_u
        self._erased_i += gone_i
        return gone_u, gone_i

    def _drop(self, dead_u: np.ndarray, dead_i: np.ndarray) -> tuple[list[str], list[str]]:
        """Free user rows ``dead_u`` and item rows ``dead_i`` (zeroed, reusable); returns their ids."""
        users: list[str] = [self._uids[r] for r in dead_u]
        items: list[str] = [self._iids[r] for r in dead_i]
        for r, uid in zip(dead_u.tolist(), users, strict=True):
            del self._umap[uid]
            self._uids[r] = None
            self._free_u.append(r)
        for r, iid in zip(dead_i.tolist(), items, strict=True):
            del self._imap[iid]
            self._iids[r] = None
            self._free_i.append(r)
        text = self._TU_ROW[dead_u]
        text = text[text > 0]
        self._TU_VECS[text], self._TU_COUNTS[text] = 0, 0
        self._tu_free.extend(text.tolist())
        for name in self._USER_ARRAYS:
            getattr(self, name)[dead_u] = 0
        for name in self._ITEM_ARRAYS:
            getattr(self, name)[dead_i] = 0
        if len(dead_u) or len(dead_i):
            self._replay.drop_rows(users=dead_u, items=dead_i)
        self._feedback.forget(dead_i)
        for r in dead_u.tolist():
            self._knn.forget_user(r)
        if len(dead_i):
            self._knn.prune(keep=self._ALIVE_I[: len(self._iids)].copy())
        return users, items

    # ------------------------------------------------------------------ export
    def export(self, full: bool, *, candidates: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Header part and tensors of a model update (see :mod:`trainer.updates`).

        ``full=False``: rows touched since the previous delta export (then forgotten), plus
        ``expired_user_ids``/``expired_item_ids`` removed since. ``full=True``: every live row;
        touches nothing, so it may be encoded later (off the training thread) from what it returns.
        Every array returned is a copy. ``user_candidates`` (int32, -1 padded) indexes the header's
        ``candidate_item_ids``, here the model's item id by row (``""`` for dead rows, which no
        candidate names): a valid update as it is; :func:`trainer.updates.chunk_update` narrows it
        to the ids each message references.

        ``candidates=False`` (full exports): the two candidate tensors are left out and
        ``header["candidates"]`` is a function of a slice of the exported users returning their
        ``(user_candidates, user_candidate_scores)`` when called (item rows as of this export): the
        co-occurrence walk is most of a full export's cost (~0.25 ms per user), so the trainer's
        snapshot thread computes it in small steps while learning goes on.
        """
        nu, ni = len(self._uids), len(self._iids)
        uids = self._uids
        alive_i = self._ALIVE_I[:ni]
        rebase = not full and self._clock - self._lp_ref > _LP_REBASE
        if rebase:
            # log popularity is exported relative to a clock reference, moved only by a delta that
            # carries every item row: a replica following deltas never mixes two references, and a
            # snapshot (which replicas skip when they hold its version) never moves it
            self._lp_ref = self._clock
        if full:
            ur = np.flatnonzero(np.fromiter((x is not None for x in uids), bool, nu))
            ir = np.flatnonzero(alive_i)
        else:  # only the touched rows' liveness is looked up: a scan of every user id took 40 ms per delta at 1M users
            ur = np.flatnonzero(self._TOUCH_U[:nu])
            ur = ur[np.fromiter((uids[r] is not None for r in ur.tolist()), bool, len(ur))]
            ir = np.flatnonzero(alive_i if rebase else alive_i & self._TOUCH_I[:ni])
            self._TOUCH_U[:nu] = False
            self._TOUCH_I[:ni] = False
        now = self._newest_time
        tau = self.popularity_half_life_s / math.log(2.0)
        seen = self._SEEN_I[ir]
        pop = self._POP[ir] * np.exp(-np.clip(now - seen, 0, None) / tau)
        knn, users32, gains = self._knn, ur.astype(np.int32), self.knn_gains

        def candidates_of(part: slice) -> tuple[np.ndarray, np.ndarray]:
            rows, vals = knn.candidates(users32[part], n_items=ni, alive=self._ALIVE_I[:ni], gain=gains)
            return np.ascontiguousarray(rows, np.int32), np.ascontiguousarray(vals, np.float32)

        iids = self._iids
        header: dict[str, Any] = {
            "global_mean": self.global_mean,
            "user_ids": [self._uids[r] for r in ur],
            "item_ids": [iids[r] for r in ir],
            "candidate_item_ids": [x if x is not None else "" for x in iids],  # a copy; dead rows are named by no candidate
            "ranking": self.rank_weights.to_dict(),
        }
        if not full:
            header["expired_user_ids"] = self._expired_u + self._erased_u
            header["expired_item_ids"] = self._expired_i + self._erased_i
            self._expired_u, self._expired_i, self._erased_u, self._erased_i = [], [], [], []
        tensors = {
            "user_factors": np.ascontiguousarray(self._user_vectors(ur), np.float32),
            "user_bias": np.ascontiguousarray(self._BU[ur], np.float32),
            "item_factors": np.ascontiguousarray(self._item_vectors(ir), np.float32),
            "item_bias": np.ascontiguousarray(self._BI[ir], np.float32),
            "item_popularity": np.ascontiguousarray(pop, np.float32),
            "item_log_popularity": log_popularity(self._RPOP[ir], self._RPOPT[ir] - self._lp_ref, self._pop_taus),
            "user_mf_gain": self._user_mf_gain(ur),
        }
        if candidates or not full:
            tensors["user_candidates"], tensors["user_candidate_scores"] = candidates_of(slice(None))
        else:
            header["candidates"] = candidates_of
        tensors.update(self._feedback.export(ir))
        return header, tensors

    def _item_side(self) -> dict[str, Any]:
        """The user-independent inputs of :func:`score_items`, as exported now (see
        :meth:`ranking_inputs`); valid until the next :meth:`learn_batch`."""
        ni = len(self._iids)
        alive = self._ALIVE_I[:ni]
        h = self._horizon  # only the served column (what score_items would pick), as a 1-d array
        lp = log_popularity(self._RPOP[:ni, h], self._RPOPT[:ni] - self._lp_ref, self._pop_taus[h])
        side: dict[str, Any] = {"log_popularity": np.where(alive, lp, -np.inf)}
        side["lp_max"] = float(side["log_popularity"].max()) if ni else None
        side["pop_part"] = popularity_part(self.rank_weights, side["log_popularity"], side["lp_max"])
        if self.rank_mf:
            # item vectors with the text projection as of each item's last event (the kernel's
            # cache): what a replica holds from the delta that followed that event
            has = self._XN[:ni] > 0
            q = self._Q[:ni]
            if has.any():
                q = q.copy()
                q[has] += self._XW[:ni][has]
            side["item_factors"], side["item_bias"] = q, self._BI[:ni]
        return side

    def ranking_inputs(self, user_id: str, item_side: dict[str, Any] | None = None) -> tuple[list[str | None], dict[str, Any]]:
        """``(item ids by row, keyword arguments of score_items)`` for one user, from exactly the
        values a model update exports now: ``score_items(m.rank_weights, **kw)`` is what a serving
        replica holding the newest update ranks by. Dead rows have id None and score -inf.
        ``item_side``: :meth:`_item_side`, when already computed since the last batch."""
        ni = len(self._iids)
        side = self._item_side() if item_side is None else item_side
        kw: dict[str, Any] = {"log_popularity": side["log_popularity"], "lp_max": side["lp_max"], "pop_part": side["pop_part"]}
        u = self._umap.get(user_id)
        if u is not None:
            kw["user_vector"] = self._user_vectors(np.array([u]))[0]
            cr, cv = self._knn.candidates(np.array([u], np.int32), n_items=ni, alive=self._ALIVE_I[:ni], gain=self.knn_gains)
            kw["cand_rows"], kw["cand_vals"] = cr[0], cv[0]
            kw["mf_gain"] = float(self._user_mf_gain(np.array([u]))[0])
            if "item_factors" in side:
                kw["item_factors"], kw["item_bias"] = side["item_factors"], side["item_bias"]
        return self._iids, kw

    def rank_scores(self, user_id: str, item_side: dict[str, Any] | None = None) -> tuple[list[str | None], np.ndarray]:
        """``(item ids by row, scores)``: :func:`score_items` on :meth:`ranking_inputs`, with
        free (expired) rows at -inf."""
        ids, kw = self.ranking_inputs(user_id, item_side)
        s = score_items(self.rank_weights, **kw)
        s[~self._ALIVE_I[: len(s)]] = -np.inf
        return ids, s

    @property
    def global_mean(self) -> float:
        return float(self._GM[0] / self._GM[1]) if self._GM[1] > 0 else 0.5 * (self.rating_min + self.rating_max)

    def memory_bytes_per_row(self) -> dict[str, float]:
        """Bytes held per user row and per item row (arrays + id-map entry estimate): ``user`` on
        average over the users now (text rows and long co-occurrence rings shared out over them),
        ``user_full`` for a user with text and a full ring."""
        import sys

        nu = max(len(self._uids), 1)
        knn = self._knn.memory_bytes(nu)
        text_row = self._TU_VECS[0:1].nbytes + self._TU_COUNTS[0:1].nbytes
        text_in_use = (self._n_tu - 1 - len(self._tu_free)) * text_row
        per_u = sum(getattr(self, a)[0:1].nbytes for a in self._USER_ARRAYS)
        per_i = sum(getattr(self, a)[0:1].nbytes for a in self._ITEM_ARRAYS)
        uid = next(iter(self._umap), "123456")
        map_entry = sys.getsizeof(uid) + 8 * 3 + 8  # key object + dict slot (hash, key, value) + list slot
        return {"user": float(per_u + knn["user"] + text_in_use / nu + map_entry),
                "user_full": float(per_u + knn["user_full"] + text_row + map_entry), "item": float(per_i + knn["item"] + map_entry)}

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """All learned state as JSON-able meta plus numpy arrays (for safetensors; no pickle)."""
        nu, ni = len(self._uids), len(self._iids)
        rmeta, rarrays = self._replay.state()
        meta = {
            "state_version": _STATE_VERSION,
            "params": self.get_params(),
            "user_ids": self._uids, "item_ids": self._iids,
            "free_u": self._free_u, "free_i": self._free_i,
            "rng": self._rng.bit_generator.state, "rng_u": self._rng_u.bit_generator.state,
            "rng_i": self._rng_i.bit_generator.state, "krng": int(self._krng[0]),
            "lr_mult": self._lr_mult, "boost_left": self._boost_left, "drifts": self._drifts,
            "newest_time": self._newest_time, "last_expiry": self._last_expiry, "clock": self._clock,
            "horizon": self._horizon, "lp_ref": self._lp_ref,
            "expired_u": self._expired_u, "expired_i": self._expired_i,
            "replay_credit": self._replay_credit, "replay": rmeta, "tu_free": self._tu_free,
        }
        kmeta, karrays = self._knn.state(nu, ni)
        meta["knn"] = kmeta
        arrays = {name.lstrip("_"): np.ascontiguousarray(getattr(self, name)[:nu]) for name in self._USER_ARRAYS}
        arrays.update({name.lstrip("_"): np.ascontiguousarray(getattr(self, name)[:ni]) for name in self._ITEM_ARRAYS})
        for name in self._GLOBAL_ARRAYS:
            arrays[name.lstrip("_")] = np.ascontiguousarray(getattr(self, name))
        arrays["TU_VECS"], arrays["TU_COUNTS"] = self._TU_VECS[: self._n_tu].copy(), self._TU_COUNTS[: self._n_tu].copy()
        arrays.update(rarrays)
        arrays.update(karrays)
        meta["feedback"], farrays = self._feedback.state()
        arrays.update(farrays)
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> HybridMF:
        """Rebuild a model from :meth:`state` output (e.g. after safetensors/JSON round trips)."""
        if meta.get("state_version") != _STATE_VERSION:
            raise ValueError(f"unsupported model state version {meta.get('state_version')!r}")
        m = cls(**meta["params"])
        nu, ni = len(meta["user_ids"]), len(meta["item_ids"])
        m._init_state(max(nu, 256), max(ni, 256))
        for name in cls._USER_ARRAYS + cls._ITEM_ARRAYS:
            if name == "_TU_ROW" and "TU_ROW" not in arrays:  # older builds: a text vector per user (see below)
                continue
            saved = arrays[name.lstrip("_")]
            getattr(m, name)[: len(saved)] = saved
        if "TU_ROW" in arrays:
            m._TU_VECS, m._TU_COUNTS = np.array(arrays["TU_VECS"], np.float32), np.array(arrays["TU_COUNTS"], np.float32)
            m._n_tu, m._tu_free = len(m._TU_COUNTS), [int(r) for r in meta.get("tu_free", [])]
        else:  # "TU"/"TUN" per user (older builds): a text row for each user with comments
            has = np.flatnonzero(arrays["TUN"] > 0)
            m._give_text_rows(has.astype(np.int32))
            m._TU_VECS[m._TU_ROW[has]], m._TU_COUNTS[m._TU_ROW[has]] = arrays["TU"][has], arrays["TUN"][has]
        for name in cls._GLOBAL_ARRAYS:
            src, dst = arrays.get(name.lstrip("_")), getattr(m, name)
            if src is None:  # an array added since (state of an older build): its default
                continue
            if dst.ndim == 1 and len(src) < len(dst):  # a slot added since: default
                dst[: len(src)] = src
            else:
                dst[...] = src
        m._uids, m._iids = list(meta["user_ids"]), list(meta["item_ids"])
        m._umap = {x: r for r, x in enumerate(m._uids) if x is not None}
        m._imap = {x: r for r, x in enumerate(m._iids) if x is not None}
        m._free_u, m._free_i = list(meta["free_u"]), list(meta["free_i"])
        m._rng.bit_generator.state = meta["rng"]
        m._rng_u.bit_generator.state = meta["rng_u"]
        m._rng_i.bit_generator.state = meta["rng_i"]
        m._krng[0] = np.uint64(meta["krng"])
        m._lr_mult, m._boost_left, m._drifts = float(meta["lr_mult"]), int(meta["boost_left"]), int(meta["drifts"])
        m._newest_time, m._last_expiry = float(meta["newest_time"]), float(meta["last_expiry"])
        m._clock, m._horizon, m._lp_ref = float(meta["clock"]), int(meta["horizon"]), float(meta["lp_ref"])
        m._expired_u, m._expired_i = list(meta["expired_u"]), list(meta["expired_i"])
        m._replay_credit = float(meta["replay_credit"])
        m._replay = ReplayBuffer.from_state(meta["replay"], arrays)
        m._knn = SequentialKNN.from_state(meta["knn"], arrays)
        if "feedback" in meta:  # checkpoints of older builds start it empty
            m._feedback = ItemFeedback.from_state(meta["feedback"], arrays)
        return m


def warm_up(settings: TrainerSettings | None = None) -> None:
    """Run every compiled kernel once on a throwaway model (numba compiles, or loads its cache)."""
    m = HybridMF.from_settings(settings) if settings is not None else HybridMF()
    m = HybridMF(**{**m.get_params(), "rank_sample": 1.0})
    emb = np.zeros(m.text_dim, np.float32)
    emb[0] = 1.0
    for n in range(8):
        m.learn_one(f"u{n % 2}", f"i{n % 3}", 4.0 + n % 2, event_time=1.0 + n)
    m.learn_one("u0", "i1", kind=KIND_CLICK, event_time=10.0)
    m.learn_one("u1", "i2", None, kind=KIND_COMMENT, embedding=emb, event_time=11.0)
    # ... and on a batch as the trainer receives it: decoded from bytes, its arrays are read-only,
    # another numba specialization (without this the first real batch compiled for 2-25 s)
    mixed = ExampleBatch.build(event_ids=["", "", ""], user_ids=["u0", "u1", "u2"], item_ids=["i0", "i1", "i2"],
                               kinds=[KIND_RATING, KIND_CLICK, KIND_COMMENT], targets=[4.0, np.nan, 3.0],
                               event_times=[12.0, 13.0, 14.0], published=[12.0, 13.0, 14.0], processed=[12.0, 13.0, 14.0],
                               emb_rows=[-1, -1, 0], embeddings=emb.reshape(1, -1))
    m.learn_batch(ExampleBatch.decode(mixed.encode()))
    m.export(full=True)
    m.rank_scores("u0")
    m.cooc.prune(np.ones(len(m._iids), np.bool_))


def _one_batch(user_id: str, item_id: str, rating: float | None, kind: int | None, event_time: float | None,
               embedding: np.ndarray | None, weight: float) -> ExampleBatch:
    if kind is None:
        kind = KIND_COMMENT if embedding is not None else KIND_RATING
    t = time.time() if event_time is None else event_time
    emb = None if embedding is None else np.asarray(embedding, np.float32).reshape(1, -1)
    return ExampleBatch.build(
        event_ids=[""], user_ids=[user_id], item_ids=[item_id], kinds=[kind],
        targets=[math.nan if rating is None else rating], event_times=[t], published=[t], processed=[t],
        weights=[weight], emb_rows=[0 if emb is not None else -1], embeddings=emb)
