import pytest

from tokenfocus.prompts import counterfactual

PROMPT = "two small green stars left of three small green circles and one small yellow diamond"


@pytest.mark.parametrize(
    ("key", "up", "want"),
    [
        # a compositional key finds its own count, before its noun (not the first count word)
        (
            "three circles (counting)",
            True,
            ("two ... left of four small green circles", "four circles (counting)"),
        ),
        (
            "three circles (counting)",
            False,
            ("two ... left of two small green circles", "two circles (counting)"),
        ),
        ("two stars (counting)", False, ("three small green stars left of three", "three stars (counting)")),
        # a short key: the first such word of the prompt
        ("three (counting)", True, ("left of four small", "four (counting)")),
        ("star left of circle (spatial)", True, ("stars right of three", "star right of circle (spatial)")),
        ("left of (spatial)", False, ("stars right of three", "right of (spatial)")),
    ],
)
def test_a_counterfactual_changes_one_claim_in_key_and_prompt_alike(key, up, want):
    prompt, new_key = counterfactual(PROMPT, key, up, counts=("two", "three", "four"))
    assert new_key == want[1]
    for part in want[0].split(" ... "):
        assert part in prompt
    assert len(prompt.split()) == len(PROMPT.split())
    assert sum(a != b for a, b in zip(PROMPT.split(), prompt.split(), strict=True)) == 1


def test_no_counterfactual_where_it_would_give_itself_away():
    # "one" is never claimed or left (singular and plural nouns would differ), a colour is not
    # swapped, a count the data never uses is not claimed (four up goes down), and a key whose words
    # the prompt lacks has no place to change
    assert counterfactual(PROMPT, "one diamond (counting)", True) is None
    assert counterfactual(PROMPT, "green stars (color)", True) is None
    assert counterfactual("four red stars", "four stars (counting)", True, counts=("three", "four")) == (
        "three red stars",
        "three stars (counting)",
    )
    assert counterfactual("four red stars", "four stars (counting)", True, counts=("four",)) is None
    assert counterfactual(PROMPT, "four dogs (counting)", True) is None
    assert counterfactual(PROMPT, "dog above cat (spatial)", True) is None
