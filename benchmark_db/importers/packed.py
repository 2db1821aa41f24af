"""The validated runs of a file, kept compact between reading and storing.

Every row is validated before anything is stored, so an import holds the whole file's runs at
once. As RunReports (five pydantic models each, with their field sets and dicts) they took about
3.5 KB a run: 100k runs held 350 MB, 1M runs 3.5 GB. Packed with marshal, a run takes about
240 bytes, in bytes objects the garbage collector does not scan; iterating turns each back into
a RunReport, one at a time, as the store takes them.
"""

import marshal
from array import array
from collections.abc import Callable, Iterator
from enum import Enum
from functools import lru_cache
from operator import attrgetter

from benchmark_db.records import RunReport, TrainingSpec

# Every field of a RunReport is packed, also one added to the record later: the report's own
# fields, then those of each nested model. Enums are packed as their values (marshal takes only
# built-in types); validation makes them again.
_PARTS = ("spec", "hyperparameters", "outcome")


def _layout(model: type, names: tuple[str, ...]) -> tuple[tuple[str, ...], Callable, tuple]:
    """The names, a function of a model giving their values as a tuple, and the positions of
    the enums among them."""
    fields = model.model_fields
    enums = tuple(i for i, name in enumerate(names) if isinstance(fields[name].annotation, type)
                  and issubclass(fields[name].annotation, Enum))
    values = attrgetter(*names) if len(names) > 1 else lambda obj: (getattr(obj, names[0]),)
    return names, values, enums


_TOP = _layout(RunReport, tuple(name for name in RunReport.model_fields if name not in _PARTS))
_PART_LAYOUTS = tuple((part, _layout(RunReport.model_fields[part].annotation,
                                     tuple(RunReport.model_fields[part].annotation.model_fields)))
                      for part in _PARTS)

# finish(report, flag) -> the report to store, given the flag kept with it by add().
Finish = Callable[[RunReport, bool], RunReport]


class PackedRuns:
    """Validated runs in the order they were added. Iterating yields them as RunReports equal
    to those added (after finish, if given), and may be repeated."""

    def __init__(self, finish: Finish | None = None):
        self._finish = finish
        self._packed: list[bytes] = []
        self._rows = array("q")  # the row number of each run
        self._flags = array("b")

    def add(self, row_number: int, report: RunReport, flag: bool = False) -> int:
        """Keeps the run (a validated RunReport) of the row, with a flag for finish; returns
        its index."""
        self._packed.append(_pack(report))
        self._rows.append(row_number)
        self._flags.append(flag)
        return len(self._packed) - 1

    def same_run(self, i: int, j: int) -> bool:
        """Whether the runs of index i and j are equal RunReports. Equal packed bytes are;
        unequal ones may be too (a metadata map in another order, 0.0 and -0.0, or marshal's
        back-references), so their values are compared as the models compare them, field by
        field with ==."""
        a, b = self._packed[i], self._packed[j]
        return a == b or marshal.loads(a) == marshal.loads(b)

    def row_number(self, i: int) -> int:
        return self._rows[i]

    def __len__(self) -> int:
        return len(self._packed)

    def __iter__(self) -> Iterator[RunReport]:
        for packed, flag in zip(self._packed, self._flags):
            report = _unpack(packed)
            yield report if self._finish is None else self._finish(report, bool(flag))


def _pack(report: RunReport) -> bytes:
    values = list(_plain(report, _TOP))
    for part, layout in _PART_LAYOUTS:
        values.append(_plain(getattr(report, part), layout))
    return marshal.dumps(tuple(values))


def _plain(model, layout) -> tuple:
    _, get_values, enums = layout
    values = get_values(model)
    if enums:
        values = tuple(value.value if i in enums else value for i, value in enumerate(values))
    return values


def _unpack(packed: bytes) -> RunReport:
    """The report again, validated anew (it passed before, with these values): validation is
    faster than model_construct (about 20 us against 60 us a run)."""
    values = marshal.loads(packed)
    top_names = _TOP[0]
    data = dict(zip(top_names, values))
    for (part, (names, _, _)), part_values in zip(_PART_LAYOUTS, values[len(top_names):]):
        data[part] = (_spec(names, part_values) if part == "spec"
                      else dict(zip(names, part_values)))
    return RunReport.model_validate(data)


@lru_cache(maxsize=4096)
def _spec(names: tuple[str, ...], values: tuple) -> TrainingSpec:
    """A file's runs share few specs: each is validated once, and shared (it is frozen)."""
    return TrainingSpec.model_validate(dict(zip(names, values)))
