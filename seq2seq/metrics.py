"""Measures of generated replies: BLEU, diversity, and how generic the bot is.

BLEU is sacrebleu's corpus BLEU (Post, 2018, "A Call for Clarity in Reporting BLEU Scores") on
detokenised text with its default 13a tokenisation, one reference per query. A chatbot's reply
is one of many good answers, so BLEU against a single film line is low for any model; it is
useful for comparing models on the same test file, not as an absolute grade.
"""

from __future__ import annotations

from collections import Counter

import sacrebleu

from .vocab import detokenize


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def distinct_n(replies: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of all replies (Li et al., 2016): 1.0 is never repeating."""
    grams = [tuple(tokens[i : i + n]) for tokens in replies for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def most_frequent(replies: list[str], top: int = 10) -> list[str]:
    return [reply for reply, _ in Counter(replies).most_common(top)]


def top_replies_share(replies: list[str], top: int = 10) -> float:
    """Share of all replies that are one of the `top` most frequent replies: high means generic."""
    return share_within(replies, most_frequent(replies, top))


def share_within(replies: list[str], chosen: list[str]) -> float:
    """Share of all replies that are exactly one of `chosen`."""
    chosen = set(chosen)
    return sum(reply in chosen for reply in replies) / len(replies) if replies else 0.0


def generation_scores(replies: list[list[str]], references: list[str], greedy_top: list[str]) -> dict:
    """The figures of generated replies (tokens) against detokenised references; `greedy_top`
    are the model's most frequent greedy replies, to tell whether another decoder escapes them."""
    texts = [detokenize(tokens) for tokens in replies]
    return {
        "bleu": corpus_bleu(texts, references),
        "distinct_1": distinct_n(replies, 1),
        "distinct_2": distinct_n(replies, 2),
        "avg_reply_length": sum(map(len, replies)) / len(replies),
        "top10_reply_share": top_replies_share(texts),
        "greedy_top10_share": share_within(texts, greedy_top),
    }
