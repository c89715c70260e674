"""The learning kernel through its named tables: predicts before it learns, writes the tables in place."""

from __future__ import annotations

import numpy as np
import pytest

from streamproc.examples import KIND_RATING
from trainer._kernel import Examples, ItemTable, Params, SharedState, UserTable, learn


def test_a_rating_is_predicted_then_learned_in_place() -> None:
    k, dim = 2, 3
    users = UserTable(factors=np.full((1, k), 0.5, np.float32), bias=np.zeros(1, np.float32), text_row=np.zeros(1, np.int32),
                      text_vecs=np.zeros((1, k), np.float32), text_counts=np.zeros(1, np.float32), seen=np.zeros(1),
                      learned=np.zeros(1, np.float32), touched=np.zeros(1, np.bool_))
    items = ItemTable(factors=np.full((1, k), 0.5, np.float32), bias=np.zeros(1, np.float32), text=np.zeros((1, dim), np.float32),
                      text_count=np.zeros(1, np.float32), text_proj=np.zeros((1, k), np.float32), popularity=np.zeros(1, np.float32),
                      seen=np.zeros(1), alive=np.ones(1, np.bool_), learned=np.zeros(1, np.float32), touched=np.zeros(1, np.bool_))
    shared = SharedState(text_proj=np.zeros((dim, k), np.float32), head=np.zeros(dim, np.float32), head_stats=np.zeros(4),
                         head_inv=np.eye(dim + 1), mean=np.array([6.0, 2.0]))  # two ratings so far, mean 3
    ex = Examples(users=np.zeros(1, np.int32), items=np.zeros(1, np.int32), kinds=np.array([KIND_RATING], np.uint8),
                  targets=np.array([5.0]), weights=np.ones(1), emb_rows=np.full(1, -1, np.int32), fresh=np.ones(1, np.bool_),
                  times=np.array([10.0]), embeddings=np.zeros((0, dim), np.float32))
    par = Params(lr=0.05, bias_lr=0.025, l2=0.0, l2_bias=0.0, rating_min=0.5, rating_max=5.0, lr_mult=1.0, text_lr=0.0,
                 sentiment_lr=0.0, sentiment_weight=0.5, implicit_lr=0.02, popularity_tau=100.0, sentiment_min=5.0,
                 n_negatives=0, n_rank=0, bias_shrink=0.0, factor_boost=0.0, n_items=1)
    out, stored = np.zeros(1), np.zeros(1)
    assert learn(ex, users, items, shared, par, np.ones(1, np.uint64), out, stored) == 1
    assert out[0] == pytest.approx(3.0 + 0.5) and stored[0] == 5.0  # mean + p_u . q_i, before learning
    # the error (3.5 - 5) moved both biases and factors up, in the model's own arrays
    assert users.bias[0] == pytest.approx(2 * 0.025 * 1.5) and items.bias[0] == users.bias[0]
    assert (users.factors > 0.5).all() and (items.factors > 0.5).all()
    assert shared.mean.tolist() == [11.0, 3.0] and users.learned[0] == items.learned[0] == 1.0
    assert users.touched[0] and items.touched[0] and users.seen[0] == items.seen[0] == 10.0 and items.popularity[0] == 1.0
