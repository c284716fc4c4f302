"""Runs the ZODB storage conformance suite (test_storage.py), then the fault tests
(faults.py, readonly.py), and reports them.

    python run.py [-k PATTERN]... [--timeout S] [--logs DIR] [--list]
                  [--faults-only | --no-faults] [NAME]...

NAME selects a test case class or one test (`BasicStorageTests` or
`BasicStorageTests.testLen`); -k selects by substring or fnmatch pattern of the test
name, as unittest's -k does. The backend is STANDBY_ZEO_BACKEND (standby, the default,
or stock); see cluster.py and README.md for the environment it reads.

Output: one line per test as it ends, then the tracebacks of failures and errors, the
counts per mixin, the known failures with their reasons, and last, alone on its line,
`N passed, N failed, N skipped` (failed counts errors, time-outs and unexpected passes of
known failures; skipped counts the known failures that failed as expected). Exit status
0 only if nothing failed.

Every test is bounded (--timeout, default 180 s): past it the runner saves every
thread's stack and the server logs, kills the test's servers (which fails the client
calls it waits on) and, if the test still has not ended GRACE_AFTER_TIMEOUT later, stops
every server, reports what ran and exits. The whole run is bounded by run.sh (timeout).
"""

import argparse
import faulthandler
import importlib.metadata
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
import unittest
from pathlib import Path

import base
import cluster
import faults
import readonly
import test_storage

GRACE_AFTER_TIMEOUT = 60.0


class Outcome:
    PASS, FAIL, ERROR, SKIP, XFAIL, XPASS, TIMEOUT = (
        "ok", "FAIL", "ERROR", "skipped", "expected failure", "UNEXPECTED PASS", "TIMEOUT")


class Result(unittest.TestResult):
    """Counts per test case class, prints a line per test, saves server logs of failing
    tests, and guards each test with a watchdog."""

    def __init__(self, total, timeout, logs_dir, verbose):
        super().__init__()
        self.total = total
        self.timeout = timeout
        self.logs_dir = logs_dir
        self.verbose = verbose
        self.outcomes = []  # (test, outcome, seconds)
        self.details = []  # (test, outcome, text)
        self._started = 0.0
        self._current = None
        self._timed_out = set()
        self._lock = threading.Lock()
        self._watchdog = None
        self.last_started = None

    def unfinished(self):
        """The test that started last if it has no outcome (the run was interrupted in
        it), else None."""
        t = self.last_started
        if t is None or (self.outcomes and self.outcomes[-1][0] is t):
            return None
        return t

    # -- watchdog

    def _arm(self, test):
        self._watchdog = threading.Timer(self.timeout, self._on_timeout, args=(test,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _disarm(self):
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _on_timeout(self, test):
        with self._lock:
            if self._current is not test:
                return
            self._timed_out.add(test.id())
        print(f"\n*** {_name(test)}: still running after {self.timeout:.0f} s",
              file=sys.stderr, flush=True)
        self._dump_stacks(test, "stacks-at-timeout.txt")
        backend = getattr(test, "cluster", None)
        if backend is not None:
            self._save_logs(test)
            print(f"*** killing its servers (pids {backend.pids()})", file=sys.stderr,
                  flush=True)
            backend.kill()
        timer = threading.Timer(GRACE_AFTER_TIMEOUT, self._on_hang, args=(test,))
        timer.daemon = True
        timer.start()

    def _on_hang(self, test):
        with self._lock:
            if self._current is not test:
                return
        print(f"\n*** {_name(test)} did not end {GRACE_AFTER_TIMEOUT:.0f} s after its "
              "servers were killed; stopping everything", file=sys.stderr, flush=True)
        self._dump_stacks(test, "stacks-at-abort.txt")
        self.outcomes.append((test, Outcome.TIMEOUT, time.monotonic() - self._started))
        self.details.append((test, Outcome.TIMEOUT, "hung; run aborted"))
        cluster.close_session()
        report(self, [f"run aborted: {_name(test)} hung; "
                      f"{self.total - len(self.outcomes)} test(s) not run"])
        sys.stdout.flush()
        os._exit(1)

    def _dump_stacks(self, test, name):
        """Every thread's stack into the test's log directory (the race tests run 64
        threads: too much for the terminal), or to stderr without one."""
        if self.logs_dir is None:
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            return
        d = self.logs_dir / _name(test)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / name, "w") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
        print(f"*** stacks of all threads: {d / name}", file=sys.stderr, flush=True)

    # -- unittest hooks

    def startTest(self, test):
        super().startTest(test)
        with self._lock:
            self._current = test
        self.last_started = test
        self._started = time.monotonic()
        if self.verbose:
            print(f"[{len(self.outcomes) + 1:4}/{self.total}] {_name(test)} ...",
                  flush=True)
        self._arm(test)

    def stopTest(self, test):
        self._disarm()
        with self._lock:
            self._current = None
        super().stopTest(test)

    def _record(self, test, outcome, text=None):
        if test.id() in self._timed_out:
            note = f"still running after {self.timeout:.0f} s; its servers were killed then"
            outcome, text = Outcome.TIMEOUT, f"{note}; it then ended: {outcome}\n{text or ''}"
        secs = time.monotonic() - self._started
        self.outcomes.append((test, outcome, secs))
        if text is not None and outcome != Outcome.SKIP:
            self.details.append((test, outcome, text))
        # (Not for an unexpected pass: unittest reports it after tearDown stopped the
        # servers and removed their directory, and its logs tell nothing.)
        if outcome in (Outcome.FAIL, Outcome.ERROR, Outcome.TIMEOUT):
            self._save_logs(test)
        why = f": {text}" if outcome == Outcome.SKIP and text else ""
        print(f"[{len(self.outcomes):4}/{self.total}] {_name(test)} ... {outcome} "
              f"({secs:.1f} s){why}", flush=True)

    def _save_logs(self, test):
        backend = getattr(test, "cluster", None)
        if backend is None or self.logs_dir is None:
            return
        try:
            backend.save_logs(self.logs_dir / _name(test))
        except OSError as e:
            print(f"(could not save the server logs: {e})", file=sys.stderr)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, Outcome.PASS)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, Outcome.FAIL, self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        # Errors in setUpClass and the like come with a _ErrorHolder, not a test.
        self._record(test, Outcome.ERROR, self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, Outcome.SKIP, reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, Outcome.XFAIL)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, Outcome.XPASS,
                     "passed, but KNOWN in test_storage.py says it must fail: "
                     "update the list")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = Outcome.FAIL if issubclass(err[0], test.failureException) else Outcome.ERROR
            self.details.append((subtest, kind, self._exc_info_to_string(err, test)))


def _name(test):
    """ClassName.method, without the module."""
    cls = type(test).__name__
    meth = getattr(test, "_testMethodName", None)
    return f"{cls}.{meth}" if meth else str(test)


def _class_name(test):
    return type(test).__name__ if hasattr(test, "_testMethodName") else "(other)"


def counts(outcomes):
    """(passed, failed, skipped, expected failures) of (test, outcome, secs) triples."""
    passed = sum(1 for _, o, _ in outcomes if o == Outcome.PASS)
    failed = sum(1 for _, o, _ in outcomes
                 if o in (Outcome.FAIL, Outcome.ERROR, Outcome.TIMEOUT, Outcome.XPASS))
    xfail = sum(1 for _, o, _ in outcomes if o == Outcome.XFAIL)
    skipped = sum(1 for _, o, _ in outcomes if o == Outcome.SKIP) + xfail
    return passed, failed, skipped, xfail


def report(result, trailer=()):
    """Prints the details and the counts; `trailer` lines go just before the final
    line, which must stay last."""
    out = sys.stdout
    for test, outcome, text in result.details:
        print("=" * 78, file=out)
        print(f"{outcome}: {_name(test)}", file=out)
        print("-" * 78, file=out)
        print(text.rstrip(), file=out)
    print("=" * 78, file=out)

    # Per mixin (test case class), in the suite's order.
    order = [c.__name__ for c in test_storage.TEST_CASES] + [
        c.__name__ for m in FAULT_MODULES for c in m.CASES]
    by_class = {}
    for test, outcome, secs in result.outcomes:
        by_class.setdefault(_class_name(test), []).append((test, outcome, secs))
    names = order + sorted(n for n in by_class if n not in order)
    width = max(len(n) for n in names)
    print(f"{'mixin':<{width}}  passed  failed  skipped  (xfail)  seconds", file=out)
    for n in names:
        rows = by_class.get(n)
        if not rows:
            continue
        p, f, s, x = counts(rows)
        secs = sum(r[2] for r in rows)
        print(f"{n:<{width}}  {p:6}  {f:6}  {s:7}  {x:7}  {secs:7.1f}", file=out)

    print("\nknown failures (test_storage.KNOWN):", file=out)
    for (cls, meth), (kind, reason) in test_storage.KNOWN.items():
        seen = [o for t, o, _ in result.outcomes if _name(t) == f"{cls}.{meth}"]
        state = seen[0] if seen else "not run"
        print(f"  {cls}.{meth} [{kind}; {state}]: {reason}", file=out)

    passed, failed, skipped, xfail = counts(result.outcomes)
    elapsed = time.monotonic() - START
    print(f"\nbackend {BACKEND}, {len(result.outcomes)} tests in {elapsed:.0f} s; "
          f"skipped includes {xfail} expected failure(s)", file=out)
    for line in trailer:
        print(line, file=out)
    print(f"{passed} passed, {failed} failed, {skipped} skipped", file=out, flush=True)
    return failed


def flatten(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from flatten(t)
        else:
            yield t


# The fault tests (faults.py, readonly.py): stock clients through kills, swaps and
# partitions; they run after the conformance suite.
FAULT_MODULES = (faults, readonly)


def select(names, patterns, suites=("storage", "faults")):
    loader = unittest.TestLoader()
    loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in patterns] or None
    tests = []
    if "storage" in suites:
        tests += flatten(test_storage.load_tests(loader, None, None))
    if "faults" in suites:
        for m in FAULT_MODULES:
            tests += flatten(m.load_tests(loader, None, None))
    if names:
        tests = [t for t in tests
                 if any(_name(t) == n or _class_name(t) == n for n in names)]
    return tests


START = time.monotonic()
BACKEND = os.environ.get("STANDBY_ZEO_BACKEND", "standby")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="TestCaseClass or TestCaseClass.testMethod")
    ap.add_argument("-k", dest="patterns", action="append", default=[],
                    help="only tests whose name matches (substring or fnmatch pattern)")
    ap.add_argument("--timeout", type=float,
                    default=float(os.environ.get("STANDBY_ZODB_TEST_TIMEOUT", "180")),
                    help="seconds per test (default 180: more than the 120 s the race "
                    "tests allow themselves)")
    ap.add_argument("--logs", type=Path,
                    default=Path(os.environ.get(
                        "STANDBY_ZODB_LOGS",
                        os.path.join(os.environ.get("TMPDIR", "/tmp"), "standby-zodb-logs"))),
                    help="where the server logs of failing tests are saved (emptied first)")
    ap.add_argument("--list", action="store_true", help="list the selected tests and exit")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--faults-only", action="store_true",
                       help="only the fault tests (faults.py, readonly.py)")
    which.add_argument("--no-faults", action="store_true",
                       help="only the conformance suite (test_storage.py)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="also a line when a test starts")
    args = ap.parse_args()

    suites = (("faults",) if args.faults_only
              else ("storage",) if args.no_faults else ("storage", "faults"))
    tests = select(args.names, args.patterns, suites)
    if args.list:
        for t in tests:
            print(_name(t))
        print(f"{len(tests)} tests")
        return 0
    if not tests:
        print("no test selected", file=sys.stderr)
        return 2

    # SIGTERM (from `timeout`, say) unwinds like Ctrl-C, so the servers get stopped.
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    versions = ", ".join(f"{p} {importlib.metadata.version(p)}"
                         for p in ("ZODB", "ZEO", "msgpack", "persistent", "BTrees"))
    print(f"backend {BACKEND}; {versions}; python {sys.version.split()[0]}")
    if BACKEND == "standby":
        print(f"STANDBY_BIN={Path(cluster.default_bin_dir()).resolve()}")
    shutil.rmtree(args.logs, ignore_errors=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    # The clients' own log (ZEO reconnects, conflict resolution the tests provoke on
    # purpose, errors from the server) goes to a file, not between the result lines.
    logging.basicConfig(filename=args.logs / "client.log", level=logging.WARNING,
                        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")

    try:
        base.pool()  # fails now, not in every test, if the backend cannot be made
    except cluster.ClusterError as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 2

    result = Result(len(tests), args.timeout, args.logs, verbose=args.verbose)
    interrupted = None
    try:
        unittest.TestSuite(tests).run(result)
    except KeyboardInterrupt as e:
        interrupted = e
        test = result.unfinished()
        if test is not None:
            result.outcomes.append((test, Outcome.ERROR, time.monotonic() - result._started))
            result.details.append((test, Outcome.ERROR,
                                   f"interrupted ({e or 'KeyboardInterrupt'})"))
    except Exception:
        traceback.print_exc()
        interrupted = True
    finally:
        result._disarm()
        base.close_pool()
        cluster.close_session()

    trailer = []
    if any(o not in (Outcome.PASS, Outcome.XFAIL, Outcome.SKIP)
           for _, o, _ in result.outcomes):
        trailer.append(f"server logs of failing tests and the clients' log: {args.logs}")
    if interrupted is not None:
        trailer.append(f"run interrupted after {len(result.outcomes)} of {len(tests)} tests")
    failed = report(result, trailer)
    return 1 if failed or interrupted is not None else 0


if __name__ == "__main__":
    sys.exit(main())
