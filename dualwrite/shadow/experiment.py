"""A small Scientist/laboratory-style experiment: run a control and a candidate, compare, report.

    exp = Experiment("items.by_tenant", context={"store": "memory"}, percentage=10)
    exp.ignore(lambda control, candidate: control.exception and candidate.exception)
    value = exp.run(control=lambda: old(), candidate=lambda: new())   # returns the control's value

The control's value (or exception) is always what the caller gets. Exceptions are observations and are
compared like values (same type and message = match). Errors raised by the experiment's own code
(compare, clean, ignore, run_if) are caught and reported as result "error", never raised to the caller,
except with `raise_on_mismatches` (meant for tests), which raises MismatchError on a mismatch.

`evaluate()` does the comparison part alone; ShadowReader uses it to compare off the request path.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dualwrite.normalize import DEFAULT, Normalizer, identical, sort_key

log = logging.getLogger("dualwrite.shadow.experiment")

RESULTS = ("match", "mismatch", "ignored", "skipped", "error")
CHUNK = 256  # top-level items compared or normalized between two pause() calls


class MismatchError(AssertionError):
    def __init__(self, result: Result) -> None:
        rows = "".join(f"\n  {r}" for r in result.rows)
        super().__init__(f"experiment {result.name!r} mismatched:{rows}\n{result.diff or ''}")
        self.result = result


@dataclass
class Observation:
    name: str  # "control" / "candidate"
    value: Any = None
    exception: BaseException | None = None
    duration: float = 0.0
    cleaned: Any = None

    @classmethod
    def capture(cls, name: str, fn: Callable[[], Any]) -> Observation:
        start = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # an observation, compared like a value
            return cls(name, exception=exc, duration=time.perf_counter() - start)
        return cls(name, value=value, duration=time.perf_counter() - start)

    def unwrap(self) -> Any:
        if self.exception is not None:
            raise self.exception
        return self.value


@dataclass
class Result:
    name: str
    outcome: str  # one of RESULTS
    control: Observation | None = None
    candidate: Observation | None = None
    context: dict[str, Any] = field(default_factory=dict)
    diff: str | None = None
    error: str | None = None
    rows: list[str] = field(default_factory=list)  # the differing rows, named (ORM objects by their key)

    @property
    def matched(self) -> bool:
        return self.outcome == "match"

    @property
    def mismatched(self) -> bool:
        return self.outcome == "mismatch"


def _exception_key(exc: BaseException) -> tuple[str, str]:
    return (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")


class Experiment:
    def __init__(
        self,
        name: str,
        *,
        context: dict[str, Any] | None = None,
        percentage: float = 100.0,
        compare: Callable[[Any, Any], bool] | None = None,
        clean: Callable[[Any], Any] | None = None,
        ignores: list[Callable[[Observation, Observation], bool]] | None = None,
        run_if: Callable[[], bool] | None = None,
        raise_on_mismatches: bool = False,
        normalizer: Normalizer = DEFAULT,
        ordered: bool = True,
        publish: Callable[[Result], None] | None = None,
    ) -> None:
        self.name = name
        self.context = dict(context or {})
        self.percentage = percentage
        self._compare = compare
        self._clean = clean
        self._ignores = list(ignores or [])
        self._run_if = run_if
        self.raise_on_mismatches = raise_on_mismatches
        self.normalizer = normalizer
        self.ordered = ordered
        self._publish = publish

    # -- configuration (chainable, Scientist style) ----------------------------------------------
    def compare_with(self, fn: Callable[[Any, Any], bool]) -> Experiment:
        self._compare = fn
        return self

    def clean_with(self, fn: Callable[[Any], Any]) -> Experiment:
        self._clean = fn
        return self

    def ignore(self, fn: Callable[[Observation, Observation], bool]) -> Experiment:
        self._ignores.append(fn)
        return self

    def run_if(self, fn: Callable[[], bool]) -> Experiment:
        self._run_if = fn
        return self

    def add_context(self, **kw: Any) -> Experiment:
        self.context.update(kw)
        return self

    # -- running -----------------------------------------------------------------------------------
    def should_run(self) -> bool:
        """Sampling and run_if; an error in run_if disables the candidate (and is logged)."""
        if self.percentage <= 0 or (self.percentage < 100 and random.random() * 100 >= self.percentage):
            return False
        if self._run_if is not None:
            try:
                return bool(self._run_if())
            except Exception as exc:
                log.warning("experiment %s: run_if raised %r; candidate skipped", self.name, exc)
                return False
        return True

    def run(self, control: Callable[[], Any], candidate: Callable[[], Any]) -> Any:
        """Run both synchronously (in random order) and return the control's value or raise its error."""
        if not self.should_run():
            return control()
        pair = [("control", control), ("candidate", candidate)]
        random.shuffle(pair)
        obs = {n: Observation.capture(n, f) for n, f in pair}
        result = self.evaluate(obs["control"], obs["candidate"])
        self.publish(result)
        if self.raise_on_mismatches and result.mismatched:
            raise MismatchError(result)
        return obs["control"].unwrap()

    def publish(self, result: Result) -> None:
        if self._publish is None:
            return
        try:
            self._publish(result)
        except Exception as exc:  # reporting must never break the caller
            log.warning("experiment %s: publishing failed: %r", self.name, exc)

    def cleaned(self, value: Any, pause: Callable[[], None] | None = None) -> Any:
        value = self._clean(value) if self._clean is not None else value
        if pause is None or not isinstance(value, list | tuple) or len(value) <= CHUNK:
            return self.normalizer.result(value, ordered=self.ordered)
        out: list[Any] = []  # a long result in slices, so a paused worker lets requests run in between
        for i in range(0, len(value), CHUNK):
            pause()
            out += self.normalizer.normalize(value[i : i + CHUNK])
        return out if self.ordered else sorted(out, key=sort_key)

    @staticmethod
    def _identical(a: Any, b: Any, pause: Callable[[], None] | None) -> bool:
        if pause is None or type(a) is not list or type(b) is not list or len(a) <= CHUNK:
            return identical(a, b)
        if len(a) != len(b):
            return False
        for i in range(0, len(a), CHUNK):
            pause()
            if not identical(a[i : i + CHUNK], b[i : i + CHUNK]):
                return False
        return True

    def evaluate(self, control: Observation, candidate: Observation, pause: Callable[[], None] | None = None) -> Result:
        """Compare two observations: match, mismatch, ignored or error (never raises).

        Equal raw values of the same types (shadow.normalize.identical) match without normalizing; with
        `pause`, long results are handled in slices with a pause() before each (a worker's yield point)."""
        from dualwrite.normalize import diff_text, row_differences

        result = Result(self.name, "error", control, candidate, dict(self.context))
        try:
            if control.exception is not None or candidate.exception is not None:
                a = _exception_key(control.exception) if control.exception is not None else None
                b = _exception_key(candidate.exception) if candidate.exception is not None else None
                if control.exception is None:
                    control.cleaned = self.cleaned(control.value, pause)
                if candidate.exception is None:
                    candidate.cleaned = self.cleaned(candidate.value, pause)
                same = a == b
                da = {"exception": list(a)} if a else control.cleaned
                db = {"exception": list(b)} if b else candidate.cleaned
            elif (
                self._compare is None and self._clean is None and self._identical(control.value, candidate.value, pause)
            ):
                result.outcome = "match"
                return result
            else:
                if pause is not None:
                    pause()
                control.cleaned = self.cleaned(control.value, pause)
                candidate.cleaned = self.cleaned(candidate.value, pause)
                if self._compare is not None:
                    same = bool(self._compare(control.value, candidate.value))
                else:
                    same = control.cleaned == candidate.cleaned
                da, db = control.cleaned, candidate.cleaned
            if same:
                result.outcome = "match"
                return result
            for ignore in self._ignores:
                if ignore(control, candidate):
                    result.outcome = "ignored"
                    return result
            result.outcome = "mismatch"
            result.diff = diff_text(da, db)
            result.rows = row_differences(da, db)
        except Exception as exc:
            result.outcome = "error"
            result.error = f"{type(exc).__name__}: {exc}"
            log.warning("experiment %s: comparison failed: %s", self.name, result.error)
        return result
