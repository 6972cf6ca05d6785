"""The generated language: deterministic documents whose labels follow from their words."""

from __future__ import annotations

import torch

from sae.corpus.grammar import (
    DETERMINERS,
    NOT_APPLICABLE,
    NOUN_FORMS,
    PLURAL,
    SINGULAR,
    TOPICS,
    VARIABLES,
    VERB_FORMS,
    generate_document,
    indicators,
    vocabulary,
)
from sae.corpus.tokenizer import build_tokenizer

DOCUMENTS = [generate_document(7, "train", i) for i in range(300)]


def _number(forms: dict[str, tuple[str, str]]) -> dict[str, int]:
    return {form: pair.index(form) + 1 for form, pair in forms.items()}


def test_documents_are_a_pure_function_of_seed_split_and_index() -> None:
    again = generate_document(7, "train", 5)
    assert again.words == DOCUMENTS[5].words and again.labels == DOCUMENTS[5].labels
    assert generate_document(8, "train", 5).words != DOCUMENTS[5].words
    assert generate_document(7, "validation", 5).words != DOCUMENTS[5].words


def test_every_word_has_one_label_per_variable() -> None:
    for document in DOCUMENTS:
        assert set(document.labels) == set(VARIABLES)
        assert all(len(values) == len(document.words) for values in document.labels.values())
        assert len(set(document.labels["topic"])) == 1


def test_verbs_agree_with_the_number_pending_before_them() -> None:
    verbs = _number(VERB_FORMS)
    checked = 0
    for document in DOCUMENTS:
        number = document.labels["number"]
        for t, word in enumerate(document.words):
            if word in verbs:
                assert number[t - 1] == verbs[word], (document.text, t)
                checked += 1
    assert checked > 500


def test_agreement_opens_on_a_subject_noun_whose_determiner_agrees() -> None:
    verbs, nouns = _number(VERB_FORMS), _number(NOUN_FORMS)
    determiners = set(DETERMINERS[SINGULAR]) | set(DETERMINERS[PLURAL])
    opened = 0
    for document in DOCUMENTS:
        number, words = document.labels["number"], document.words
        for t, word in enumerate(words):
            if word in nouns:
                determiner = next(w for w in reversed(words[max(0, t - 3) : t]) if w in determiners)
                assert determiner in DETERMINERS[nouns[word]]
            if t and word not in verbs and number[t] != number[t - 1]:
                assert nouns[word] == number[t]
                opened += 1
    assert opened > 500


def test_bracket_depth_and_quote_follow_the_punctuation() -> None:
    for document in DOCUMENTS:
        depth = quote = 0
        for t, word in enumerate(document.words):
            depth += (word == "(") - (word == ")")
            quote ^= word == '"'
            assert document.labels["bracket_depth"][t] == depth
            assert document.labels["quote"][t] == quote
        assert depth == 0 and quote == 0


def test_list_position_counts_items_after_the_colon() -> None:
    seen = set()
    for document in DOCUMENTS:
        position = document.labels["list_position"]
        for t, word in enumerate(document.words):
            if word == ":":
                assert position[t] == 1
            elif word in (",", "and") and position[t]:
                assert position[t] == position[t - 1] + 1
            elif position[t]:
                assert position[t] == position[t - 1]
            seen.add(position[t])
        assert position[-1] == 0
    assert seen == set(range(7))


def test_tokenizer_gives_one_token_per_word_and_round_trips() -> None:
    tokenizer = build_tokenizer()
    assert len(tokenizer) == len(vocabulary())
    for document in DOCUMENTS[:50]:
        ids = tokenizer(document.text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(document.words)
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == document.text
    assert tokenizer.bos_token_id not in tokenizer("the dog", add_special_tokens=False)["input_ids"]


def test_indicators_name_each_value_and_ignore_positions_outside_documents() -> None:
    labels = {"topic": torch.tensor([0, 2, NOT_APPLICABLE]), "number": torch.tensor([0, 2, 1])}
    out = indicators(labels)
    assert out["topic=animals"].tolist() == [True, False, False]
    assert out["topic=music"].tolist() == [False, True, False]
    assert out["number=plural"].tolist() == [False, True, False]
    assert "number=0" not in out and len(out) == len(TOPICS) + 2
