"""Preview, then apply: which variations of a job wait for the painter's pick, which one is shown, and what is
left to do when they apply or discard. Editor-neutral (no Qt, no editor API): the Krita docker draws the strip and
the preview layer from this state, a GIMP dialog can do the same.

One `Choice` per job. Its results arrive one by one (`count` N gives N); the first one is shown as soon as it
arrives, so the painter sees something before the last variation is done. The `PreviewBoard` holds the choice the
strip shows (the newest job's): when a newer job's first result arrives, the older choice is retired, and the
editor removes its preview layer (its results stay in the history).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .jobs import ResultImage

#: A choice's life: its results arrive, then the painter applies one or discards them all (or the job failed
#: before any result arrived).
OPEN, APPLIED, DISCARDED, RETIRED = "open", "applied", "discarded", "retired"


class PreviewError(Exception):
    """A pick the current state does not allow (no such variation, already applied); `str()` says which."""


@dataclass
class Choice:
    """One job's variations, in the order of their index, and the one on the canvas."""

    key: str  # the editor's id of the job (Krita: the local id)
    expected: int  # how many variations the job was asked for
    results: list[ResultImage] = field(default_factory=list)
    shown: int | None = None  # position in `results` of the variation on the canvas
    state: str = OPEN
    finished: bool = False  # the job ended: no more variations will arrive

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    @property
    def waiting_for(self) -> int:
        """Variations still to come (0 once the job ended, whatever it delivered)."""
        return 0 if self.finished else max(0, self.expected - len(self.results))

    def shown_result(self) -> ResultImage | None:
        return None if self.shown is None else self.results[self.shown]

    def add(self, result: ResultImage) -> bool:
        """Store an arrived variation (in index order; a repeat of an index replaces it). True when it is the first,
        which the editor shows at once."""
        self._require_open()
        for pos, have in enumerate(self.results):
            if have.index == result.index:
                self.results[pos] = result
                return False
        on_canvas = self.shown_result()
        self.results.append(result)
        self.results.sort(key=lambda r: r.index)
        if on_canvas is None:
            self.shown = self.results.index(result)
            return True
        self.shown = self.results.index(on_canvas)  # an earlier index arriving late must not change what is shown
        return False

    def select(self, position: int) -> ResultImage:
        """Show the variation at `position` in the strip (0 = the first thumbnail)."""
        self._require_open()
        if not 0 <= position < len(self.results):
            raise PreviewError(
                f"there is no variation {position + 1}: {len(self.results)} of {self.expected} have arrived"
            )
        self.shown = position
        return self.results[position]

    def apply(self) -> ResultImage:
        """The shown variation becomes the result; the choice is closed."""
        self._require_open()
        result = self.shown_result()
        if result is None:
            raise PreviewError("nothing to apply yet: no variation has arrived")
        self.state = APPLIED
        return result

    def discard(self) -> None:
        self._require_open()
        self.state = DISCARDED
        self.shown = None

    def _require_open(self) -> None:
        if not self.is_open:
            raise PreviewError(f"this job's variations were already {self.state}")


class PreviewBoard:
    """The choices of the jobs a docker sent, and which one the strip shows (`current`)."""

    def __init__(self) -> None:
        self._choices: dict[str, Choice] = {}
        self.current: Choice | None = None

    def __iter__(self) -> Iterator[Choice]:
        return iter(self._choices.values())

    def get(self, key: str) -> Choice | None:
        return self._choices.get(key)

    def expect(self, key: str, count: int) -> Choice:
        """A job was sent that will bring `count` variations (at least one)."""
        choice = Choice(key, max(1, int(count)))
        self._choices[key] = choice
        return choice

    def arrived(self, key: str, result: ResultImage) -> tuple[bool, Choice | None]:
        """A variation of job `key` arrived: (show it now?, the older choice it retired, whose preview must go).

        Results of a job the board never expected, or one already applied or discarded, are ignored."""
        choice = self._choices.get(key)
        if choice is None or not choice.is_open:
            return False, None
        retired = None
        if self.current is not choice:
            retired = self._retire_current()
            self.current = choice
        return choice.add(result), retired

    def ended(self, key: str, state: str) -> Choice | None:
        """Job `key` ended (done, failed or cancelled). A choice left without any variation is dropped; returns
        the choice when it still waits for the painter."""
        choice = self._choices.get(key)
        if choice is None:
            return None
        choice.finished = True
        if not choice.results:
            del self._choices[key]
            return None
        return choice if choice.is_open else None

    def select(self, position: int) -> ResultImage:
        return self._require_current().select(position)

    def apply(self) -> tuple[Choice, ResultImage]:
        """Apply the shown variation of the current choice; the strip is empty afterwards."""
        choice = self._require_current()
        result = choice.apply()
        self._close(choice)
        return choice, result

    def discard(self) -> Choice:
        """Drop every variation of the current choice; the document goes back to how it was before the preview."""
        choice = self._require_current()
        choice.discard()
        self._close(choice)
        return choice

    def _require_current(self) -> Choice:
        if self.current is None:
            raise PreviewError("no variations are waiting: generate first")
        return self.current

    def _retire_current(self) -> Choice | None:
        old = self.current
        if old is None or not old.is_open:
            return None
        old.state = RETIRED
        old.shown = None
        self._close(old)
        return old

    def _close(self, choice: Choice) -> None:
        self._choices.pop(choice.key, None)
        if self.current is choice:
            self.current = None
