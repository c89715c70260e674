"""The compiled (numba) learning kernels of :class:`trainer.model.HybridMF`, and the named tables
they read and write.

One call of :func:`learn` runs a whole batch: for each example in order, predict (before
learning), then one SGD step of the factor model, the sentiment head, the BPR click update and
the text profiles (see :mod:`trainer.model` for the model itself). Its inputs come as named tables,
typing.NamedTuple of numpy arrays, which numba compiles like separate arguments (measured: the
same events/s and cold-cache compile time as positional arrays):

* :class:`Examples`: the batch, in learning order (replayed examples interleaved);
* :class:`UserTable`, :class:`ItemTable`: per-row state, indexed by the model's user/item rows;
* :class:`SharedState`: the state every example shares (text projection, sentiment head, mean);
* :class:`Params`: the step sizes and other numbers of one call.

The tables are views of the model's own arrays (built per call, nothing copied): the kernel
writes the model's state in place.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit

from streamproc.examples import KIND_CLICK, KIND_COMMENT, KIND_RATING

__all__ = ["Examples", "UserTable", "ItemTable", "SharedState", "Params", "learn", "bump_popularity"]

_BLEND_KEEP = 1.0 - 1.0 / 2_000  # memory (rated comments) of the head's share in a rated comment's prediction
LL_EVERY = 4  # events per likelihood update of the popularity horizons


class Examples(NamedTuple):
    """One batch in learning order: row ``n`` is one example."""

    users: np.ndarray  # int32 user row
    items: np.ndarray  # int32 item row
    kinds: np.ndarray  # uint8 KIND_*
    targets: np.ndarray  # float64 rating (NaN: none, e.g. a click or an unrated comment)
    weights: np.ndarray  # float64 example weight
    emb_rows: np.ndarray  # int32 row of ``embeddings`` (a comment's text), -1 none
    fresh: np.ndarray  # bool: False for a replayed example (learned, not predicted again)
    times: np.ndarray  # float64 event time (seconds)
    embeddings: np.ndarray  # float32 [comments, text_dim]


class UserTable(NamedTuple):
    """Per user row."""

    factors: np.ndarray  # float32 [users, k]: p_u
    bias: np.ndarray  # float32: b_u
    text_row: np.ndarray  # int32: row of text_vecs holding t_u (0: none; row 0 stays zeros)
    text_vecs: np.ndarray  # float32 [text rows, k]: t_u, running mean of the user's projected comments
    text_counts: np.ndarray  # float32 [text rows]: comments in t_u
    seen: np.ndarray  # float64: newest event time
    learned: np.ndarray  # float32: examples learned (young rows take larger steps)
    touched: np.ndarray  # bool: changed since the last delta export


class ItemTable(NamedTuple):
    """Per item row."""

    factors: np.ndarray  # float32 [items, k]: q_i
    bias: np.ndarray  # float32: b_i
    text: np.ndarray  # float32 [items, text_dim]: x_i, running mean of the item's comment embeddings
    text_count: np.ndarray  # float32: comments (and content records) in x_i
    text_proj: np.ndarray  # float32 [items, k]: x_i W as of the item's last example (a cache)
    popularity: np.ndarray  # float32: time-decayed example count
    seen: np.ndarray  # float64: newest event time
    alive: np.ndarray  # bool: the row holds an item (negatives are sampled among these)
    learned: np.ndarray  # float32: examples learned
    touched: np.ndarray  # bool: changed since the last delta export


class SharedState(NamedTuple):
    """State every example shares."""

    text_proj: np.ndarray  # float32 [text_dim, k]: W
    head: np.ndarray  # float32 [text_dim]: the sentiment head's weights
    head_stats: np.ndarray  # float64 [4]: head bias, rated comments seen, the two sums of its share in a blend
    head_inv: np.ndarray  # float64 [text_dim + 1, text_dim + 1]: inverse regularised Gram matrix (ridge head)
    mean: np.ndarray  # float64 [2]: sum and count of explicit targets


class Params(NamedTuple):
    """The numbers of one :func:`learn` call."""

    lr: float  # factor step
    bias_lr: float
    l2: float
    l2_bias: float
    rating_min: float
    rating_max: float
    lr_mult: float  # drift boost of every step
    text_lr: float  # step of W
    sentiment_lr: float  # SGD step of the head; 0: the ridge head (recursive least squares)
    sentiment_weight: float  # weight of head-estimated targets (unrated comments)
    implicit_lr: float  # BPR step (clicks)
    popularity_tau: float  # decay time (seconds) of items' popularity
    sentiment_min: float  # rated comments before the head's estimates are used
    n_negatives: int  # sampled negatives per click
    n_rank: int  # sampled candidates a click is ranked against
    bias_shrink: float
    factor_boost: float
    n_items: int  # item rows in use


@njit(cache=True)
def _rand(state: np.ndarray) -> np.uint64:
    """splitmix64: a tiny PRNG whose whole state is one uint64 (checkpointable)."""
    z = state[0] + np.uint64(0x9E3779B97F4A7C15)
    state[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else (hi if x > hi else x)


@njit(cache=True)
def _sample_item(rng: np.ndarray, n_items: int, alive: np.ndarray, avoid: int) -> np.int64:
    for _ in range(32):
        j = np.int64(_rand(rng) % np.uint64(n_items))
        if j != avoid and alive[j]:
            return j
    return np.int64(-1)


@njit(cache=True)
def learn(ex, users, items, shared, par, rng, out, stored_targets):  # pragma: no cover - compiled
    """Predict then learn each example of ``ex`` in order; predictions of fresh examples go to
    ``out`` (their targets, head-estimated where used, to ``stored_targets``); returns how many.
    ``rng``: the splitmix64 state (uint64 [1]) of negative and candidate sampling."""
    # the math below in the module's notation: the tables' arrays under short names
    P, BU, TU_ROW, TU, TUN, SEEN_U, CNT_U, TOUCH_U = (users.factors, users.bias, users.text_row, users.text_vecs, users.text_counts,
                                                      users.seen, users.learned, users.touched)
    Q, BI, X, XN, XW, POP, SEEN_I, ALIVE_I, CNT_I, TOUCH_I = (items.factors, items.bias, items.text, items.text_count,
                                                              items.text_proj, items.popularity, items.seen, items.alive,
                                                              items.learned, items.touched)
    W, SW, SST, HP, GM = shared.text_proj, shared.head, shared.head_stats, shared.head_inv, shared.mean
    u_rows, i_rows, kinds, targets, weights = ex.users, ex.items, ex.kinds, ex.targets, ex.weights
    emb_rows, fresh, times, emb = ex.emb_rows, ex.fresh, ex.times, ex.embeddings
    n_items = par.n_items
    k = P.shape[1]
    dim = X.shape[1]
    # river's convention: squared-loss gradient 2 (y_hat - y), L2 term l2 * w; below, the factor 2
    # is folded into the step sizes (lr, blr) and halved into the L2 terms
    lr = 2.0 * par.lr * par.lr_mult
    blr = 2.0 * par.bias_lr * par.lr_mult
    l2 = 0.5 * par.l2
    l2b = 0.5 * par.l2_bias
    rmin = par.rating_min
    rmax = par.rating_max
    tlr = par.text_lr * par.lr_mult
    slr = par.sentiment_lr
    clr = par.implicit_lr * par.lr_mult
    tau = par.popularity_tau
    n_neg = par.n_negatives
    n_rank = par.n_rank
    shr = par.bias_shrink
    fshr = par.factor_boost
    pu = np.empty(k, np.float32)
    hpx = np.empty(dim + 1, np.float64)
    qi = np.empty(k, np.float32)
    qj = np.empty(k, np.float32)
    acc = np.empty(k, np.float32)
    n_out = 0
    for n in range(len(u_rows)):
        u = u_rows[n]
        i = i_rows[n]
        kd = kinds[n]
        y = targets[n]
        w = weights[n]
        is_fresh = fresh[n]
        # effective vectors (text row 0 is all zeros: users without text)
        tr = TU_ROW[u]
        for f in range(k):
            pu[f] = P[u, f] + TU[tr, f]
        if XN[i] > 0:
            # x_i W with the factor loop innermost (contiguous rows of W: it vectorises)
            for f in range(k):
                acc[f] = 0.0
            for d in range(dim):
                xd = X[i, d]
                if xd != 0.0:
                    for f in range(k):
                        acc[f] += xd * W[d, f]
            for f in range(k):
                XW[i, f] = acc[f]
                qi[f] = Q[i, f] + acc[f]
        else:
            for f in range(k):
                qi[f] = Q[i, f]
        mean = GM[0] / GM[1] if GM[1] > 0 else 0.5 * (rmin + rmax)
        dot = 0.0
        for f in range(k):
            dot += pu[f] * qi[f]
        raw = mean + float(BU[u]) + float(BI[i]) + dot
        pred = _clip(raw, rmin, rmax)
        er = emb_rows[n]
        # ---- comments: the sentiment head
        if kd == KIND_COMMENT and er >= 0:
            s_raw = mean + SST[0]
            for d in range(dim):
                s_raw += SW[d] * emb[er, d]
            if math.isnan(y):
                if SST[1] >= par.sentiment_min:
                    # no rating: the text's reading of it, weighed against the factors as on rated
                    # comments (share h below); this blend is both the prediction and the target
                    # (at reduced weight), so a head that reads little into short texts moves little
                    s_c = _clip(s_raw, rmin, rmax)
                    h = _clip(SST[2] / SST[3], 0.0, 1.0) if SST[3] > 0.0 else 0.0
                    y = (1.0 - h) * pred + h * s_c
                    w = w * par.sentiment_weight
                    if is_fresh:
                        pred = y
            else:
                if is_fresh and SST[1] >= par.sentiment_min:
                    # the comment's own text predicts its rating: blend the head into the factor
                    # prediction; the head's share h is the least-squares one on the rated comments
                    # so far (decayed sums of (y - f)(s - f) and (s - f)^2; f the factor prediction)
                    s_c = _clip(s_raw, rmin, rmax)
                    h = _clip(SST[2] / SST[3], 0.0, 1.0) if SST[3] > 0.0 else 0.0
                    blend = (1.0 - h) * pred + h * s_c
                    SST[2] = _BLEND_KEEP * SST[2] + (y - pred) * (s_c - pred)
                    SST[3] = _BLEND_KEEP * SST[3] + (s_c - pred) * (s_c - pred)
                    pred = blend
                if slr > 0.0:
                    g = s_raw - y
                    for d in range(dim):
                        SW[d] -= slr * (g * emb[er, d] + l2 * SW[d])
                    SST[0] -= slr * g
                else:
                    # recursive least squares: the exact ridge fit on every rated comment so far
                    den = 1.0
                    for a in range(dim + 1):
                        acc_h = HP[a, dim]
                        for d in range(dim):
                            acc_h += HP[a, d] * emb[er, d]
                        hpx[a] = acc_h
                        den += acc_h * (emb[er, a] if a < dim else 1.0)
                    e = (y - s_raw) / den
                    for d in range(dim):
                        SW[d] += hpx[d] * e
                    SST[0] += hpx[dim] * e
                    for a in range(dim + 1):
                        ga = hpx[a] / den
                        for d in range(dim + 1):
                            HP[a, d] -= ga * hpx[d]
                SST[1] += 1.0
        if is_fresh:
            if kd == KIND_CLICK:
                # rank of the clicked item among sampled candidates (before learning)
                s_i = float(BI[i]) + dot
                beaten = 0
                drawn = 0
                for _ in range(n_rank):
                    j = _sample_item(rng, n_items, ALIVE_I, i)
                    if j < 0:
                        continue
                    drawn += 1
                    s_j = float(BI[j])
                    for f in range(k):
                        s_j += pu[f] * (Q[j, f] + XW[j, f])
                    if s_j < s_i:
                        beaten += 1
                # unseen candidates count as beaten; no candidates at all -> score 1 (top)
                pred = (beaten + (n_rank - drawn)) / n_rank if n_rank > 0 else 1.0
            out[n_out] = pred
            stored_targets[n_out] = y
            n_out += 1
        # ---- learning
        if (kd == KIND_RATING or kd == KIND_COMMENT) and not math.isnan(y):
            if is_fresh:
                GM[0] += y
                GM[1] += 1.0
            g = w * (_clip(raw, rmin, rmax) - y)
            # young rows learn their bias as a shrunk running mean of residuals (step 1/(n+shrink)),
            # then settle to the constant SGD step
            blr_u = blr
            blr_i = blr
            lr_u = lr
            lr_i = lr
            if shr > 0:
                blr_u = max(blr, 1.0 / (CNT_U[u] + shr))
                blr_i = max(blr, 1.0 / (CNT_I[i] + shr))
            if fshr > 0:
                lr_u = lr * (1.0 + fshr / math.sqrt(CNT_U[u] + 1.0))
                lr_i = lr * (1.0 + fshr / math.sqrt(CNT_I[i] + 1.0))
            if is_fresh:
                CNT_U[u] += 1.0
                CNT_I[i] += 1.0
            BU[u] -= blr_u * (g + l2b * BU[u])
            BI[i] -= blr_i * (g + l2b * BI[i])
            for f in range(k):
                puf = P[u, f]
                P[u, f] -= lr_u * (g * qi[f] + l2 * puf)
                Q[i, f] -= lr_i * (g * pu[f] + l2 * Q[i, f])
            if XN[i] > 0 and tlr > 0:
                gt = np.float32(g * tlr)
                for d in range(dim):
                    xd = X[i, d] * gt  # float32 throughout: the inner loop vectorises
                    if xd != 0.0:
                        for f in range(k):
                            W[d, f] -= xd * pu[f]
        elif kd == KIND_CLICK:
            for _ in range(n_neg):
                j = _sample_item(rng, n_items, ALIVE_I, i)
                if j < 0:
                    break
                x = float(BI[i]) - float(BI[j])
                for f in range(k):
                    qj[f] = Q[j, f] + XW[j, f]
                    x += pu[f] * (qi[f] - qj[f])
                gg = clr * w / (1.0 + math.exp(x)) if x > -30.0 else clr * w
                BI[i] += gg - clr * l2b * BI[i]
                BI[j] -= gg + clr * l2b * BI[j]
                for f in range(k):
                    puf = P[u, f]
                    P[u, f] += gg * (qi[f] - qj[f]) - clr * l2 * puf
                    Q[i, f] += gg * pu[f] - clr * l2 * Q[i, f]
                    Q[j, f] -= gg * pu[f] + clr * l2 * Q[j, f]
                TOUCH_I[j] = True
        # ---- text profiles (fresh comments only)
        if kd == KIND_COMMENT and er >= 0 and is_fresh:
            XN[i] += 1.0
            a = 1.0 / XN[i]
            for d in range(dim):
                X[i, d] += a * (emb[er, d] - X[i, d])
            TUN[tr] += 1.0  # the user's text row was given before the batch (see _give_text_rows)
            b = 1.0 / TUN[tr]
            for f in range(k):
                acc[f] = 0.0
            for d in range(dim):
                ed = emb[er, d]
                for f in range(k):
                    acc[f] += ed * W[d, f]
            for f in range(k):
                TU[tr, f] += b * (acc[f] - TU[tr, f])
        if is_fresh:
            t = times[n]
            if SEEN_I[i] > 0.0 and t > SEEN_I[i]:
                POP[i] *= math.exp(-(t - SEEN_I[i]) / tau)
            POP[i] += 1.0
            if t > SEEN_I[i]:
                SEEN_I[i] = t
            if t > SEEN_U[u]:
                SEEN_U[u] = t
        TOUCH_U[u] = True
        TOUCH_I[i] = True
    return n_out


@njit(cache=True)
def bump_popularity(i_rows, pop, stamp, clock, taus, tot, ll, keep, n_items):  # pragma: no cover - compiled
    """Event-clock popularity at several half-lives (columns of ``pop``): each event ticks the
    clock; first every horizon scores how well it predicted this event's item (log of its share of
    the decayed mass, smoothed; a decayed running sum in ``ll``), then the item's counts decay to
    now and get +1."""
    H = len(taus)
    step = np.empty(H)
    for h in range(H):
        step[h] = math.exp(-1.0 / taus[h])
    for n in range(len(i_rows)):
        i = i_rows[n]
        clock += 1.0
        age = clock - stamp[i]
        score = np.int64(clock) % LL_EVERY == 0  # the likelihood on a fixed quarter of events: as informative, 4x cheaper
        for h in range(H):
            tot[h] *= step[h]
            p = pop[i, h] * math.exp(-age / taus[h])
            if score:
                ll[h] = ll[h] * keep + math.log((p + 0.1) / (tot[h] + 0.1 * n_items))
            pop[i, h] = p + 1.0
            tot[h] += 1.0
        stamp[i] = clock
    return clock
