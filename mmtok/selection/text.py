"""Question-text preparation for MMTok's text-vision coverage term (the release's cleaned-question path).

The text term needs the *content* words of the question: boilerplate benchmark instructions and
stop words would otherwise steer coverage towards whatever patches resemble "the" or "answer".
This module reproduces the paper's cleaning exactly (including its option-letter quirk) so that
our selections match the published setting; the quirk fix is an explicit opt-in. The steps, as
the authors' release runs them: (1) drop the image placeholder, (2) drop the benchmark
post-prompts, (3) keep the words that are not stop words, (4) tokenise them word by word.
"""

from __future__ import annotations

import re
from typing import Any

IMAGE_PLACEHOLDER = "<image>"

# The 47-word stop list used for the paper.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a an the
    is are was were be been being
    have has had do does did
    it they he she we you i
    what where when why how who which
    and or but so if then
    question answer
    to for with by from at into onto upon
    """.split()
)

# Instructions that lmms-eval appends to every question of a benchmark; they carry no information
# about the image, so they are removed before looking for content words.
POST_PROMPTS: tuple[str, ...] = (
    "Answer the question using a single word or phrase.",
    "Answer with the option's letter from the given choices directly.",
)

_WORD_RE = re.compile(r"\b\w+\b")
_OPTION_LETTER_RE = re.compile(r"[A-E]")


def strip_prompt(text: str) -> str:
    """Steps 1-2: the question without the image placeholder and the benchmark post-prompts."""
    text = text.replace(IMAGE_PLACEHOLDER, "")
    for prompt in POST_PROMPTS:
        text = text.replace(prompt, "")
    return text.strip()


def _is_kept(word: str, keep_option_letters: bool) -> bool:
    if keep_option_letters and _OPTION_LETTER_RE.fullmatch(word):
        return True
    return word.lower() not in STOP_WORDS


def clean_question(text: str, *, keep_option_letters: bool = False) -> str:
    """Steps 1-3 (module docstring): the question's content words joined by single spaces.

    If no word survives (e.g. "What is it?"), the question after step 2 is returned instead, as
    the paper does, so that the text term never silently disappears for a real question.

    `keep_option_letters=False` reproduces the authors' release, where the option letter "A"
    is dropped as the stop word "a" while "B".."D" survive. `True` keeps standalone capital
    letters A-E, which treats all options alike.
    """
    stripped = strip_prompt(text)
    words = [w for w in _WORD_RE.findall(stripped) if _is_kept(w, keep_option_letters)]
    return " ".join(words) if words else stripped


def _strip_specials(ids: list[int], tokenizer: Any) -> list[int]:
    start, end = _content_bounds(ids, tokenizer)
    return ids[start:end]


def _content_bounds(ids: list[int], tokenizer: Any) -> tuple[int, int]:
    # Only the boundary specials the tokenizer's post-processor adds are removed; ids inside the
    # sequence come from the words themselves.
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    start, end = 0, len(ids)
    if end and bos is not None and ids[0] == bos:
        start = 1
    if end > start and eos is not None and ids[end - 1] == eos:
        end -= 1
    return start, end


def _word_split_ids(words: list[str], tokenizer: Any) -> list[int]:
    if not words:
        return []
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=True)
    return _strip_specials(list(encoded["input_ids"]), tokenizer)


def _word_split_words(words: list[str], tokenizer: Any) -> tuple[list[int], list[int]]:
    """`_word_split_ids` and, per id, its word: 0, 1, 2, ... in order (words without a token skipped)."""
    if not words:
        return [], []
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=True)
    ids = list(encoded["input_ids"])
    try:
        owners = list(encoded.word_ids())
    except ValueError:  # transformers' message for a slow (Python) tokenizer
        raise ValueError(
            "word pooling needs a fast tokenizer: its word_ids() map sub-words to words "
            f"({type(tokenizer).__name__} has none)"
        ) from None
    start, end = _content_bounds(ids, tokenizer)
    owners = owners[start:end]
    if any(w is None for w in owners):
        raise ValueError(f"a special token inside the question's words: {ids[start:end]}")
    renumber = {w: i for i, w in enumerate(dict.fromkeys(owners))}
    return ids[start:end], [renumber[w] for w in owners]


def question_token_ids(text: str, tokenizer: Any, *, keep_option_letters: bool = False) -> list[int]:
    """Step 4: token ids of the cleaned question, one per sub-word, without BOS/EOS.

    The words are tokenised as word-split input (`is_split_into_words=True`), as the release does, and
    the boundary BOS/EOS the tokenizer may add are dropped because they are not question content.

    Fallbacks, so that a question with any text never yields an empty text term: the cleaned
    words, else the question after step 2, else the question with only the placeholder removed
    (a question that *is* a post-prompt). Returns [] only when nothing but the image placeholder
    and whitespace is present; MMTok then uses vision-vision coverage alone.
    """
    for candidate in _candidates(text, keep_option_letters):
        ids = _word_split_ids(candidate.split(), tokenizer)
        if ids:
            return ids
    return []


def question_token_words(
    text: str, tokenizer: Any, *, keep_option_letters: bool = False
) -> tuple[list[int], list[int]]:
    """`question_token_ids` (the same ids) and each id's word, for word pooling (Table 10 of the paper).

    A word is one whitespace-separated word of the text that was tokenised (the cleaned question:
    one `\\b\\w+\\b` match that survived stop-word removal; a fallback text: its whitespace split);
    the map is the fast tokenizer's `word_ids()` on the word-split input, as the release's encoding
    suggests. Returns (ids, words) with words[i] in 0, 1, 2, ..., one number per word, in order.
    """
    for candidate in _candidates(text, keep_option_letters):
        ids, words = _word_split_words(candidate.split(), tokenizer)
        if ids:
            return ids, words
    return [], []


def _candidates(text: str, keep_option_letters: bool) -> tuple[str, str, str]:
    """The texts `question_token_ids` tries in turn (its docstring): cleaned, post-prompts removed, raw."""
    return (
        clean_question(text, keep_option_letters=keep_option_letters),
        strip_prompt(text),
        text.replace(IMAGE_PLACEHOLDER, "").strip(),
    )
