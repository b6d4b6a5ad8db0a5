"""Question cleaning and tokenisation for MMTok's text term."""

from __future__ import annotations

import pytest

from mmtok.selection.text import POST_PROMPTS, STOP_WORDS, clean_question, question_token_ids

SPEC_STOP_WORDS = (
    "a an the is are was were be been being have has had do does did it they he she we you i "
    "what where when why how who which and or but so if then question answer "
    "to for with by from at into onto upon"
).split()
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."


@pytest.fixture(scope="module")
def tok():
    from mmtok.models.llava.tiny import build_tokenizer

    return build_tokenizer()


def test_stop_word_list_is_the_papers():
    assert len(SPEC_STOP_WORDS) == 47
    assert STOP_WORDS == frozenset(SPEC_STOP_WORDS)
    assert POST_PROMPTS == (SHORT, LETTER)


def test_post_prompt_and_placeholder_removed():
    assert clean_question(f"<image>\nIs there a dog on the grass?\n{SHORT}") == "there dog on grass"
    assert clean_question(f"Which color is the bus?\n{LETTER}") == "color bus"
    # Both post-prompts anywhere in the text, and the placeholder anywhere.
    assert clean_question(f"{SHORT} red <image> car {LETTER}") == "red car"


@pytest.mark.parametrize("word", SPEC_STOP_WORDS)
def test_every_stop_word_dropped_case_insensitively(word):
    for variant in (word, word.upper(), word.capitalize()):
        assert clean_question(f"{variant} zebra {variant}") == "zebra"


def test_regex_word_split():
    # \b\w+\b: punctuation separates words, digits and underscores are word characters.
    assert clean_question("dog's color? 2 cats, snake_case!") == "dog s color 2 cats snake_case"
    assert clean_question("  many\tspaces\n\nhere  ") == "many spaces here"


@pytest.mark.parametrize(
    ("question", "fallback"),
    [
        (f"<image>\nWhat is it?\n{SHORT}", "What is it?"),
        ("Is it?", "Is it?"),
        ("", ""),
        (f"<image>\n{SHORT}", ""),
    ],
)
def test_nothing_survives_returns_text_after_post_prompt_removal(question, fallback):
    assert clean_question(question) == fallback


def test_option_letter_quirk_and_fix():
    q = f"<image>\nWhat is the animal?\nA. cat\nB. dog\nC. bird\nD. fish\nE. cow\n{LETTER}"
    assert clean_question(q) == "animal cat B dog C bird D fish E cow"
    assert clean_question(q, keep_option_letters=True) == "animal A cat B dog C bird D fish E cow"
    # The fix only rescues standalone capitals A-E: the article and "I" stay stop words.
    assert clean_question("a cat I see", keep_option_letters=True) == "cat see"
    assert clean_question("Answer: A", keep_option_letters=True) == "A"


def _manual_ids(tok, words):
    ids = []
    for w in words:
        ids += tok(w, add_special_tokens=False)["input_ids"]
    return ids


def test_question_token_ids_drop_bos_and_match_manual(tok):
    q = f"<image>\nIs there a red car left of the bus?\n{SHORT}"
    words = clean_question(q).split()
    assert words == ["there", "red", "car", "left", "of", "bus"]
    ids = question_token_ids(q, tok)
    with_bos = tok(words, is_split_into_words=True, add_special_tokens=True)["input_ids"]
    assert with_bos[0] == tok.bos_token_id
    assert ids == with_bos[1:]
    assert ids == _manual_ids(tok, words)
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids
    # One id per sub-word, no pooling: decoding gives back exactly the cleaned words.
    assert tok.decode(ids) == "there red car left of bus"


def test_question_token_ids_multi_subword_and_letters(tok):
    q = f"What color is the cat?\nA. black\nB. white\n{LETTER}"
    ids = question_token_ids(q, tok)
    assert ids == _manual_ids(tok, ["color", "cat", "black", "B", "white"])
    assert len(ids) > 5  # "color" splits into several sub-words in the tiny vocabulary
    fixed = question_token_ids(q, tok, keep_option_letters=True)
    assert fixed == _manual_ids(tok, ["color", "cat", "A", "black", "B", "white"])


def test_question_token_ids_fallbacks(tok):
    # All stop words: the question after step 2, word-split on whitespace.
    assert question_token_ids(f"<image>\nWhat is it?\n{SHORT}", tok) == _manual_ids(tok, ["What", "is", "it?"])
    # A question that is only a post-prompt still yields its words rather than nothing.
    assert question_token_ids(f"<image>\n{SHORT}", tok) == _manual_ids(tok, SHORT.split())
    # Only the placeholder: no text at all, so no text rows (MMTok falls back to vision-only).
    assert question_token_ids("<image>\n", tok) == []


class _EosAppendingTokenizer:
    """Minimal tokenizer stub whose post-processor adds both BOS and EOS."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, words, *, is_split_into_words, add_special_tokens):
        assert is_split_into_words and add_special_tokens
        body = [10 + len(w) for w in words]
        return {"input_ids": [self.bos_token_id, *body, self.eos_token_id]}


class _NoSpecialsTokenizer(_EosAppendingTokenizer):
    bos_token_id = eos_token_id = None

    def __call__(self, words, *, is_split_into_words, add_special_tokens):
        return {"input_ids": [10 + len(w) for w in words]}


def test_boundary_specials_stripped_only_when_present():
    assert question_token_ids("zebra on grass", _EosAppendingTokenizer()) == [15, 12, 15]
    assert question_token_ids("zebra on grass", _NoSpecialsTokenizer()) == [15, 12, 15]
