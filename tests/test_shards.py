"""Shards (dr_saliency.core.shards): parsing K/N, and a partition that covers every id once
whatever the listing order, checked as properties over random id sets."""

import random
import string

import pytest

from dr_saliency.core.shards import PARTITION, Shard, parse_shard, select_shard, shard_index


def _ids(rng, n):
    alphabet = string.ascii_letters + string.digits + "_-./% éü"
    return list({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
                 for _ in range(n)})


@pytest.mark.parametrize("text, expected", [("1/1", (1, 1)), ("2/8", (2, 8)), (" 3 / 3 ", (3, 3))])
def test_parse_shard_takes_k_of_n(text, expected):
    shard = parse_shard(text)
    assert (shard.index, shard.count) == expected
    assert str(shard) == f"{expected[0]}/{expected[1]}"
    assert Shard.from_params(shard.to_params()) == shard


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "2", "a/b", "1/2/3", "-1/2", "", "1.5/2"])
def test_parse_shard_refuses_anything_else_in_one_line(text):
    with pytest.raises(ValueError, match=r"Expected a shard K/N with 1 <= K <= N") as info:
        parse_shard(text)
    assert f"Received: shard={text!r}" in str(info.value)
    assert "\n" not in str(info.value)


def test_shard_checks_its_fields():
    with pytest.raises(ValueError, match=r"Received: shard='3/2'"):
        Shard(3, 2)
    with pytest.raises(TypeError, match="Expected an int shard index"):
        Shard(True, 2)
    with pytest.raises(ValueError, match="partition"):
        Shard.from_params({"index": 1, "count": 2, "partition": "rank"})


@pytest.mark.parametrize("seed", range(20))
def test_n_shards_cover_every_id_exactly_once_whatever_the_order(seed):
    rng = random.Random(seed)
    ids = _ids(rng, rng.randint(0, 300))
    count = rng.randint(1, 12)
    parts = [select_shard(ids, f"{k}/{count}") for k in range(1, count + 1)]
    assert sorted(i for part in parts for i in part) == sorted(ids)
    assert sum(len(part) for part in parts) == len(ids)  # none twice
    shuffled = list(ids)
    rng.shuffle(shuffled)
    for k, part in enumerate(parts, 1):
        # Same members whatever order the files were listed in; the given order is kept.
        again = select_shard(shuffled, Shard(k, count))
        assert sorted(again) == sorted(part)
        assert again == [i for i in shuffled if i in set(part)]


@pytest.mark.parametrize("seed", range(5))
def test_adding_images_moves_no_other_image_to_another_shard(seed):
    rng = random.Random(seed)
    ids = _ids(rng, 200)
    more = ids + [i + "_new" for i in _ids(rng, 20)]
    for count in (2, 3, 8):
        before = {i: shard_index(i, count) for i in ids}
        assert {i: shard_index(i, count) for i in more if i in before} == before


def test_the_partition_is_pinned_and_balanced():
    # Pinned: the rule is recorded by name in every shard's output, so it never changes silently.
    assert PARTITION == "sha256-mod"
    assert [shard_index(f"synth_{i:05d}", 4) for i in range(1, 9)] == [4, 2, 3, 3, 1, 3, 4, 3]
    assert shard_index("IDRiD_01", 1) == 1
    # Balance of 8,000 ids over 8 shards: binomial, sd about 30: every shard within 5 sd.
    ids = [f"{i}_left" for i in range(8000)]
    sizes = [len(select_shard(ids, f"{k}/8")) for k in range(1, 9)]
    assert sum(sizes) == 8000 and max(abs(s - 1000) for s in sizes) < 150


def test_records_are_selected_by_their_id():
    class Rec:
        def __init__(self, i):
            self.id = i

    records = [Rec(f"img{i}") for i in range(50)]
    chosen = select_shard(records, "1/2")
    assert {r.id for r in chosen} == set(select_shard([r.id for r in records], "1/2"))
    assert select_shard(records, None) == records
