"""Measures of generated replies: BLEU, diversity, and how generic the bot is.

BLEU is sacrebleu's corpus BLEU (Post, 2018, "A Call for Clarity in Reporting BLEU Scores") on
detokenised text with its default 13a tokenisation, one reference per query. A chatbot's reply
is one of many good answers, so BLEU against a single film line is low for any model; it is
useful for comparing models on the same test file, not as an absolute grade.
"""

from __future__ import annotations

from collections import Counter

import sacrebleu


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


def distinct_n(replies: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of all replies (Li et al., 2016): 1.0 is never repeating."""
    grams = [tuple(tokens[i : i + n]) for tokens in replies for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def top_replies_share(replies: list[str], top: int = 10) -> float:
    """Share of all replies that are one of the `top` most frequent replies: high means generic."""
    if not replies:
        return 0.0
    return sum(count for _, count in Counter(replies).most_common(top)) / len(replies)
