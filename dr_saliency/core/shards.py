"""Shards: which of N independent runs does an image belong to.

``--shard K/N`` splits the selected images of ``refine``, ``explain`` or ``evaluate`` into N
parts, so that N invocations (a scheduler's array job, one per GPU, or the workers of a cluster)
together cover every image exactly once. An image's shard is a function of its id alone:

    shard(id) = 1 + (first 8 bytes of SHA-256(UTF-8 id), big-endian) mod N

Why a hash and not the id's rank among the sorted ids (``rank mod N`` or contiguous blocks):

- *Stable.* A rank moves when an image is added or removed before it, so a shard rerun on a
  folder that gained one file would own other images than its first run: a shard's result
  file would then hold images of another shard, and the merge would find them twice. With the
  hash only the added image is new; every other image stays in its shard, so a shard's output
  resumes.
- *Independent.* A shard needs only its own ids, not the whole listing, the same in every process
  and on every machine (no order of ``os.listdir``, no locale in the sort).
- *Balance.* Ranks balance exactly (sizes differ by at most one); the hash balances like a fair
  random draw: a shard of ``n`` images over ``N`` has ``n/N`` images give or take
  ``sqrt(n/N * (1 - 1/N))`` (EyePACS's 88,702 over 8 shards: 11,088 +- 99, about 1 %), which is
  far below the spread of cost between images (0 to 10 refinement iterations each). The hash
  also spreads consecutive ids (one patient's two eyes, one camera's session) over the shards,
  which ranks in contiguous blocks would not.

No TensorFlow, no numpy: the command line, the engine's caller and its workers all use it.
"""

import dataclasses
import hashlib
import re

from dr_saliency.core.files import differences

__all__ = ["PARTITION", "Shard", "check_shards", "parse_shard", "select_shard", "shard_index"]

#: Name of the partition rule, recorded with every shard's output: a merge refuses outputs made
#: with another rule (none exists yet; the name keeps the door open).
PARTITION = "sha256-mod"

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1 <= index <= count), as written ``"index/count"``."""

    index: int
    count: int

    def __post_init__(self):
        for name in ("index", "count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Expected an int shard {name}. Received: {name}={value!r}")
        if not 1 <= self.index <= self.count:
            raise ValueError(f"Expected a shard K/N with 1 <= K <= N. "
                             f"Received: shard='{self.index}/{self.count}'")

    def __str__(self):
        return f"{self.index}/{self.count}"

    def owns(self, image_id):
        """Whether ``image_id`` (str) belongs to this shard."""
        return shard_index(image_id, self.count) == self.index

    def to_params(self):
        """What an output records of its shard (JSON-ready)."""
        return {"index": self.index, "count": self.count, "partition": PARTITION}

    @classmethod
    def from_params(cls, params):
        """The shard :meth:`to_params` recorded (a ValueError for another partition rule)."""
        if not isinstance(params, dict) or params.get("partition") != PARTITION:
            raise ValueError(f"Expected a shard record of partition {PARTITION!r}. "
                             f"Received: shard={params!r}")
        return cls(int(params["index"]), int(params["count"]))


def parse_shard(text):
    """``"K/N"`` (1 <= K <= N) as a :class:`Shard`; a :class:`Shard` is returned as it is.

    Raises:
        ValueError: anything else, in one line (``Received: shard='...'``).
    """
    if isinstance(text, Shard):
        return text
    if not isinstance(text, str):
        raise TypeError(f"Expected a shard as text 'K/N'. Received: shard={text!r}")
    match = _SHARD.match(text)
    if match is None:
        raise ValueError(f"Expected a shard K/N with 1 <= K <= N, e.g. '2/8'. "
                         f"Received: shard={text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if not 1 <= index <= count:
        raise ValueError(f"Expected a shard K/N with 1 <= K <= N, e.g. '2/8'. "
                         f"Received: shard={text!r}")
    return Shard(index, count)


def shard_index(image_id, count):
    """The shard (1..count) that owns ``image_id``.

    Args:
        image_id: str; ids made from file names that are not valid UTF-8 carry surrogate
            escapes, hashed as the original bytes.
        count: int >= 1, the number of shards.
    """
    if not isinstance(image_id, str):
        raise TypeError(f"Expected a str image id. Received: image_id={image_id!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"Expected a shard count >= 1. Received: count={count!r}")
    digest = hashlib.sha256(image_id.encode("utf-8", "surrogateescape")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % count


def select_shard(items, shard, *, key=None):
    """The items of ``items`` that ``shard`` owns, in their given order.

    Args:
        items: iterable of records (with ``.id``) or of str ids.
        shard: a :class:`Shard`, ``"K/N"`` text, or None (every item).
        key: optional callable(item) -> id; default ``item.id``, or the item itself for a str.

    Returns:
        list, possibly empty (a shard may own none of a few images).
    """
    items = list(items)
    if shard is None:
        return items
    shard = parse_shard(shard)
    if key is None:
        def key(item):
            return item if isinstance(item, str) else item.id
    return [item for item in items if shard_index(key(item), shard.count) == shard.index]


def check_shards(outputs, *, what="outputs", ignore=()):
    """Check that outputs are the N shards of one job, each once, made the same way.

    Args:
        outputs: list of ``(name, params)``: an output's name (its path, for messages) and its
            recorded parameters, whose ``"shard"`` entry is a :meth:`Shard.to_params` record.
        what: what the outputs are ("result files", ...), for messages.
        ignore: parameter keys that may differ between shards (besides ``"shard"``).

    Returns:
        (count, params): the number of shards N and the parameters they share (without
        ``"shard"`` and the ``ignore`` keys), from the first output given.

    Raises:
        ValueError: in one line, naming the outputs: an output made without a shard, shards of
            different counts (mixed), a shard given twice (overlapping), shards missing, or
            parameters that differ (another model, data or setting).
    """
    if not outputs:
        raise ValueError(f"Expected the {what} of at least one shard. Received: none")
    shards = {}
    for name, params in outputs:
        record = params.get("shard")
        if record is None:
            raise ValueError(f"Expected {what} of sharded runs (each made for one shard K/N). "
                             f"Received: {name!r} records no shard")
        shard = Shard.from_params(record)
        first = next(iter(shards.values()), None)
        if first is not None and first[0].count != shard.count:
            raise ValueError(f"Expected the shards of one split into N (mixed shards). Received: "
                             f"{first[1]!r} is shard {first[0]}, {name!r} is shard {shard}")
        if shard.index in shards:
            raise ValueError(f"Expected each shard once (overlapping shards). Received: shard "
                             f"{shard} in {shards[shard.index][1]!r} and in {name!r}")
        shards[shard.index] = (shard, name, params)
    count = next(iter(shards.values()))[0].count
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in shards]
    if missing:
        given = ", ".join(f"{s} ({n!r})" for s, n, _ in sorted(shards.values(),
                                                               key=lambda v: v[0].index))
        raise ValueError(f"Expected all {count} shards. Received: shard{'s' * (len(missing) > 1)} "
                         f"{', '.join(missing)} missing (given: {given})")
    skip = {"shard", *ignore}

    def kept(params):
        return {k: v for k, v in params.items() if k not in skip}

    first_name, first_params = outputs[0]
    for name, params in outputs[1:]:
        diff = differences(kept(first_params), kept(params), holder=repr(first_name))
        if diff:
            raise ValueError(f"Expected shards made the same way (one model, data and settings). "
                             f"Received: {name!r} differs: {'; '.join(diff)}")
    return count, kept(first_params)
