import uuid

import pytest

from dialogs import cursor
from dialogs.ids import dialog_key, dialog_key_text, uuid7, uuid7_millis


def test_dialog_id_is_the_same_for_both_directions() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert dialog_key(a, b) == dialog_key(b, a)


def test_dialog_key_orders_the_pair() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    _, low, high = dialog_key(a, b)
    assert low < high
    assert {low, high} == {a, b}


def test_different_pairs_get_different_dialogs() -> None:
    a, b, c = (uuid.uuid4() for _ in range(3))
    assert dialog_key(a, b)[0] != dialog_key(a, c)[0]


def test_dialog_id_is_stable_across_releases() -> None:
    # Changing the derivation would orphan every stored dialog.
    a = uuid.UUID("00000000-0000-4000-8000-000000000001")
    b = uuid.UUID("00000000-0000-4000-8000-000000000002")
    assert str(dialog_key(b, a)[0]) == "64ff16a8-a3ed-5465-99fe-5ae6c3d37c80"


def test_a_dialog_with_yourself_is_refused() -> None:
    a = uuid.uuid4()
    with pytest.raises(ValueError, match="two different users"):
        dialog_key(a, a)


def test_uuid7_is_version_7_and_increases_within_a_process() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_uuid7_carries_the_current_time() -> None:
    import time

    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid7_millis(value) <= after + 1


def test_cursor_round_trip() -> None:
    value = uuid7()
    assert cursor.decode(cursor.encode(value)) == value


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "x",
        "A" * 21,
        "A" * 23,
        "!!!!!!!!!!!!!!!!!!!!!!",
        cursor.encode(uuid.uuid4()),  # a valid encoding, but not a message id (v4)
        cursor.encode(uuid7())[:-1] + "/",
    ],
)
def test_cursor_rejects_garbage(bad: str) -> None:
    with pytest.raises(cursor.InvalidCursor):
        cursor.decode(bad)


def test_the_text_key_is_the_same_dialog_key() -> None:
    for _ in range(200):
        a, b = uuid.uuid4(), uuid.uuid4()
        assert dialog_key_text(str(a), str(b)) == tuple(map(str, dialog_key(a, b)))
        assert dialog_key_text(str(b), str(a)) == dialog_key_text(str(a), str(b))
    with pytest.raises(ValueError, match="two different users"):
        dialog_key_text(str(a), str(a))
