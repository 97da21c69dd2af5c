"""``streaming.sparse``: a key holds its lone value as itself, a set from the second on,
and goes with its last value; what it holds reads the same either way."""

from streaming import sparse


def test_one_value_is_held_as_itself_a_second_makes_a_set():
    table: dict = {}
    sparse.add(table, "k", ("a", 1))
    assert table == {"k": ("a", 1)}  # no set for one value
    sparse.add(table, "k", ("a", 1))  # the same value again: nothing changes
    assert table == {"k": ("a", 1)}
    sparse.add(table, "k", ("b", 2))
    assert table == {"k": {("a", 1), ("b", 2)}}
    assert set(sparse.values(table["k"])) == {("a", 1), ("b", 2)}


def test_the_key_goes_with_its_last_value_either_way():
    table: dict = {}
    sparse.add(table, 1, 10)
    assert sparse.discard(table, 1, 99) is False  # not its value: kept
    assert table == {1: 10}
    assert sparse.discard(table, 1, 10) is True
    assert table == {}
    assert sparse.discard(table, 1, 10) is True  # gone already
    for value in (10, 11, 12):
        sparse.add(table, 2, value)
    assert sparse.discard(table, 2, 10) is False
    assert sparse.discard(table, 2, 11) is False
    assert sparse.discard(table, 2, 12) is True
    assert table == {}


def test_values_of_nothing_one_or_many():
    assert sparse.values(None) == ()
    assert sparse.values(7) == (7,)
    assert sparse.values({7, 8}) == {7, 8}
