"""Run third-party scorers on model output in confined worker processes, with a hard time bound.

Some scorers evaluate the text they are given: reasoning-gym's countdown, puzzle24, polynomial and
integration datasets call `sympy.parse_expr` (which runs Python) and binary_matrix, spiral_matrix,
string_insertion and n_queens call `eval` on the answer; math-verify hands expressions to sympy,
which can run for ever on 9^{9^{9^9}}. Model text therefore never reaches them in the training
process. A `Sandbox` keeps a few persistent workers (`python -m r1kit.sandbox`) and sends each
request to an idle one:

- clean start: a fresh interpreter with an environment of our own (no inherited variables, so no
  tokens or keys), cwd and HOME in an empty temporary directory, stdin/stdout pipes only;
- resource limits: RLIMIT_AS (memory), RLIMIT_CPU (lifetime CPU, backstop), RLIMIT_FSIZE 0,
  RLIMIT_CORE 0; a per-request alarm ends a worker that outlives its parent's deadline;
- confinement after the scorer libraries are imported: on Linux x86-64 a seccomp filter refuses
  fork/exec, sockets, opening files for writing, and renaming, deleting or creating files; on
  every platform a Python audit hook refuses the same operations and imports of ctypes, socket,
  subprocess and friends (defence in depth: the filter also holds against ctypes tricks);
- a hard wall-clock deadline per call: a worker that has not answered by then is killed (its whole
  process group) and replaced, and the call returns the caller's default (reward 0).

The parent sends pickles (it trusts itself) and reads back one short JSON line (it never unpickles
what a worker writes). Workers are started ahead of time and there is a spare, so a request that
kills one does not make the next wait for a restart.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 2.0  # seconds one scoring call may take, waiting for a free worker included
DEFAULT_MEMORY = 2 << 30  # bytes of address space per worker
DEFAULT_CPU = 3600  # CPU seconds a worker may use in its lifetime; it is replaced before that
MAX_REQUEST_BYTES = 4 << 20
MAX_REPLY_BYTES = 4096
_HEADER = struct.Struct("!I")


# ----------------------------------------------------------------- parent side
class _Worker:
    """One worker process; used by one thread at a time (whoever holds `lock`)."""

    def __init__(self, preload: tuple[str, ...], setup: tuple, memory: int, cpu: int):
        self.lock = threading.Lock()
        self.workdir = tempfile.TemporaryDirectory(prefix="r1kit-sandbox-")
        root = str(Path(__file__).resolve().parent.parent)
        home, cwd = Path(self.workdir.name, "home"), Path(self.workdir.name, "cwd")
        home.mkdir()
        cwd.mkdir()
        env = {
            "PATH": os.defpath,
            "PYTHONPATH": root,
            "HOME": str(home),  # libraries may cache here while they import (matplotlib does)
            "TMPDIR": str(home),
            "LANG": "C.UTF-8",
            "PYTHONNOUSERSITE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            **{k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        }
        # The worker sets its own rlimits first thing (a preexec_fn is unsafe in a threaded parent).
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-m", "r1kit.sandbox", str(memory), str(cpu)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group, killed as a whole
        )
        self.owner = os.getpid()
        first = pickle.dumps((preload, setup), protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(first)) + first)  # what to do before confinement
        self.proc.stdin.flush()
        self.buffer = b""
        self.ready = False
        self.failed = False  # it reported that it cannot start (a preload is missing)
        self.error = ""

    def read_line(self, deadline: float) -> dict | None:
        """The next JSON object line from the worker; None at `deadline`, on EOF, junk or an oversized line."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_REPLY_BYTES:
                return None
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def check_ready(self) -> bool:
        """Whether the worker has finished importing and is confined (does not wait)."""
        if not self.ready and not self.failed and self.proc.poll() is None:
            reply = self.read_line(time.monotonic())
            if reply is not None:
                self.ready = reply.get("ready") is True
                self.failed = not self.ready
                self.error = str(reply.get("error", ""))[:200]
        return self.ready

    def kill(self) -> None:
        """Kill the worker's process group and remove its directory."""
        if self.owner != os.getpid():
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()
        self.workdir.cleanup()


class Sandbox:
    """A pool of confined worker processes that run scorers on untrusted text; thread-safe.

    preload: modules the workers import before they are confined (e.g. ("reasoning_gym",));
    setup: (kind, *args) requests each worker runs before it is confined, on trusted input, to
        warm up (first calls into sympy take ~0.5 s) or build what later calls need;
    workers: processes kept running (the default 2 keeps a spare while one restarts);
    timeout: seconds a `call` may take in all, waiting for a free worker included;
    startup_timeout: seconds the first call waits for the workers to import their libraries;
    memory: bytes of address space per worker; cpu: lifetime CPU seconds per worker (it is
    replaced when it nears them).
    """

    def __init__(
        self,
        preload: tuple[str, ...] = (),
        setup: tuple = (),
        workers: int = 2,
        timeout: float = DEFAULT_TIMEOUT,
        startup_timeout: float = 120.0,
        memory: int = DEFAULT_MEMORY,
        cpu: int = DEFAULT_CPU,
    ):
        """See the class docstring."""
        if workers < 1 or timeout <= 0:
            raise ValueError(f"need workers >= 1 and timeout > 0, got {workers}, {timeout}")
        self.preload = tuple(preload)
        self.setup = tuple(setup)
        self.size = workers
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.memory, self.cpu = memory, cpu
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._owner = -1
        self._warm = False  # a worker has been ready once: from then on calls wait `timeout` only
        self.broken = False  # a worker could not import `preload`: every call returns its default
        self.stats = {"calls": 0, "failures": 0, "restarts": 0}
        atexit.register(self.close)

    def start(self) -> None:
        """Start missing workers now, without waiting for them (they import in the background)."""
        with self._lock:
            if self._owner != os.getpid():  # a forked child must not share its parent's workers
                self._workers, self._owner, self._warm = [], os.getpid(), False
            while len(self._workers) < self.size and not self.broken:
                self._workers.append(_Worker(self.preload, self.setup, self.memory, self.cpu))

    def warm_up(self, timeout: float | None = None) -> bool:
        """Start the workers and wait (up to `timeout`, default `startup_timeout`) until all are ready."""
        deadline = time.monotonic() + (self.startup_timeout if timeout is None else timeout)
        while time.monotonic() < deadline and not self.broken:
            self.start()
            with self._lock:
                workers = list(self._workers)
            ready = 0
            for w in workers:
                if w.lock.acquire(blocking=False):
                    ready += w.check_ready()
                    if w.failed:
                        self._break(w)
                    if not w.ready and not w.failed and w.proc.poll() is not None:
                        self._discard(w)  # died while starting
                    else:
                        w.lock.release()
                else:
                    ready += w.ready  # busy with a call, so it was ready
            if ready == len(workers) == self.size:
                self._warm = True
                return True
            time.sleep(0.01)
        return False

    def _break(self, worker: _Worker) -> None:
        """A worker cannot import `preload` or run `setup`: say so once; calls return their default."""
        if not self.broken:
            self.broken = True
            warnings.warn(
                f"{self!r}: workers cannot start ({worker.error}); scoring returns defaults", stacklevel=4
            )

    def _discard(self, worker: _Worker) -> None:
        """Kill a worker whose lock the caller holds, and start its replacement."""
        worker.kill()
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
                self.stats["restarts"] += 1
        worker.lock.release()
        self.start()

    def _acquire(self, deadline: float) -> _Worker | None:
        """An idle, ready worker, locked for the caller; None at `deadline`."""
        while not self.broken:
            self.start()
            with self._lock:
                workers = list(self._workers)
            for w in workers:
                if not w.lock.acquire(blocking=False):
                    continue
                if w.check_ready():
                    self._warm = True
                    return w
                if w.failed:
                    self._break(w)
                    w.lock.release()
                    return None
                if w.proc.poll() is not None:  # died while starting
                    self._discard(w)
                else:
                    w.lock.release()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.002)
        return None

    def call(self, kind: str, *args: Any, default: Any = None) -> Any:
        """Run handler `kind` (see `HANDLERS`) on `args` in a worker; `default` on timeout or failure.

        Returns within `timeout` seconds (plus the time to kill a stuck worker); only the first
        call may wait longer, up to `startup_timeout`, for the workers to start. Never raises.
        """
        start = time.monotonic()
        try:
            request = pickle.dumps((kind, args, self.timeout), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            return default
        if len(request) > MAX_REQUEST_BYTES:
            return default
        self.stats["calls"] += 1
        worker = self._acquire(start + (self.timeout if self._warm else self.startup_timeout))
        if worker is None:
            self.stats["failures"] += 1
            return default
        deadline = max(start + self.timeout, time.monotonic() + 0.05)  # found late: still a moment
        try:
            worker.proc.stdin.write(_HEADER.pack(len(request)) + request)
            worker.proc.stdin.flush()
            reply = worker.read_line(deadline)
        except Exception:  # broken pipe: the worker died
            reply = None
        if reply is None or "value" not in reply:
            self.stats["failures"] += 1
            self._discard(worker)
            return default
        cpu = reply.get("cpu")
        if isinstance(cpu, (int, float)) and cpu > 0.9 * self.cpu:  # retire it before RLIMIT_CPU hits
            self._discard(worker)
        else:
            worker.lock.release()
        return reply["value"] if reply.get("ok") is True else default

    def close(self) -> None:
        """Stop all workers."""
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:
            w.kill()

    def __repr__(self) -> str:
        return f"Sandbox(preload={self.preload}, workers={self.size}, timeout={self.timeout})"


_sandboxes: dict[bytes, Sandbox] = {}
_sandboxes_lock = threading.Lock()


# The limits a user can set, as environment variables (read when a sandbox is first created):
# name -> (Sandbox argument, unit multiplier, smallest allowed value)
LIMIT_VARIABLES = {
    "R1KIT_SANDBOX_TIMEOUT_S": ("timeout", 1.0, 0.05),
    "R1KIT_SANDBOX_MEMORY_MB": ("memory", float(1 << 20), 64.0),
    "R1KIT_SANDBOX_WORKERS": ("workers", 1.0, 1.0),
}


def sandbox_limits(environ: Any = None) -> dict[str, Any]:
    """The Sandbox keyword arguments set by the R1KIT_SANDBOX_* variables of `environ` (default
    os.environ); a value that is not a number at least the variable's minimum is a `UserError`."""
    from r1kit.config import UserError

    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, (arg, unit, low) in LIMIT_VARIABLES.items():
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low):
            raise UserError(f"{name}={raw!r}: expected a number >= {low:g} (unset it for the default)")
        out[arg] = value * unit if arg == "timeout" else int(value * unit)
    return out


def get_sandbox(preload: tuple[str, ...], setup: tuple = ()) -> Sandbox:
    """The process-wide Sandbox for (preload, setup), created on first use with the limits of the
    R1KIT_SANDBOX_* environment variables (`sandbox_limits`)."""
    key = pickle.dumps((preload, setup))
    with _sandboxes_lock:
        if key not in _sandboxes:
            _sandboxes[key] = Sandbox(preload, setup, **sandbox_limits())
        return _sandboxes[key]


def as_score(value: Any) -> float:
    """A score as a finite float: numbers and bools convert, anything else (None, text, nan) is 0.0."""
    if isinstance(value, (str, bytes)):
        return 0.0
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return value if math.isfinite(value) else 0.0


# ----------------------------------------------------------------- worker side
_GYM_DATASETS: dict[tuple, Any] = {}  # worker side: (dataset, config) -> a reasoning-gym dataset


def _gym_prepare(dataset: str, config: tuple) -> bool:
    """Build the reasoning-gym dataset object that scores (dataset, config); a setup step."""
    import reasoning_gym

    if (dataset, config) not in _GYM_DATASETS:
        _GYM_DATASETS[dataset, config] = reasoning_gym.create_dataset(dataset, size=1, seed=0, **dict(config))
    return True


def _gym_score(answer: str, entry: dict, dataset: str, config: tuple) -> float:
    """reasoning-gym's own `score_answer` for (dataset, config)."""
    _gym_prepare(dataset, config)
    return as_score(_GYM_DATASETS[dataset, config].score_answer(answer, entry))


def _math_verify(pred: str, gold: str) -> bool:
    """math-verify's equivalence of two LaTeX answers (LaTeX extraction only: no sympy parse_expr)."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig()]
    gold_parsed = parse(gold, extraction_config=config, parsing_timeout=None)
    pred_parsed = parse(pred, extraction_config=config, parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None))


HANDLERS = {"gym": _gym_score, "gym_prepare": _gym_prepare, "math": _math_verify}

# Operations a scorer never needs; refused by the audit hook once the worker is confined.
_DENIED_EVENTS = (
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
    "os.killpg", "subprocess.Popen", "pty.spawn", "socket.", "ctypes.", "os.remove", "os.rename",
    "os.mkdir", "os.rmdir", "os.symlink", "os.link", "os.chmod", "os.chown", "os.truncate",
    "os.utime", "os.putenv", "os.unsetenv", "os.chdir", "shutil.", "sys.addaudithook",
    "resource.setrlimit", "resource.prlimit", "webbrowser.open",
    "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect",
)  # fmt: skip
_DENIED_IMPORTS = {
    "ctypes", "_ctypes", "subprocess", "_posixsubprocess", "socket", "_socket", "multiprocessing",
    "_multiprocessing", "pty", "ssl", "urllib.request", "http.client", "webbrowser",
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple) -> None:
    if event.startswith(_DENIED_EVENTS):
        raise RuntimeError(f"sandbox: {event} refused")
    if event == "import" and args and str(args[0]) in _DENIED_IMPORTS:
        raise RuntimeError(f"sandbox: import {args[0]} refused")
    if event == "open" and len(args) >= 3:
        mode, flags = args[1], args[2]
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        ):
            raise RuntimeError("sandbox: opening a file for writing refused")


# seccomp (Linux x86-64): syscall numbers refused outright, and those refused for some arguments.
_DENIED_SYSCALLS = {
    57: 1, 58: 1, 59: 1, 322: 1,  # fork vfork execve execveat
    435: 38,  # clone3 -> ENOSYS, so libc falls back to clone, which is checked below
    41: 1, 53: 1, 42: 1, 49: 1,  # socket socketpair connect bind
    85: 1, 437: 38,  # creat, openat2
    87: 1, 263: 1, 82: 1, 264: 1, 316: 1, 83: 1, 258: 1, 84: 1,  # unlink(at) rename(at/2) mkdir(at) rmdir
    86: 1, 265: 1, 88: 1, 266: 1, 133: 1, 259: 1,  # link(at) symlink(at) mknod(at)
    90: 1, 91: 1, 268: 1, 92: 1, 93: 1, 94: 1, 260: 1,  # chmod fchmod fchmodat chown fchown lchown fchownat
    76: 1, 132: 1, 235: 1, 280: 1, 261: 1,  # truncate utime utimes utimensat futimesat
    62: 1, 200: 1, 234: 1, 129: 1, 297: 1, 424: 1,  # kill tkill tgkill rt_(tg)sigqueueinfo pidfd_send_signal
    101: 1, 310: 1, 311: 1,  # ptrace process_vm_readv/writev
    160: 1, 302: 1,  # setrlimit prlimit64
    425: 1, 426: 1, 427: 1, 304: 1,  # io_uring (would bypass this filter), open_by_handle_at
    165: 1, 166: 1, 155: 1, 161: 1, 272: 1, 308: 1, 321: 1,  # mount umount2 pivot_root chroot unshare setns bpf
    169: 1, 175: 1, 313: 1, 176: 1, 246: 1, 320: 1, 167: 1, 168: 1, 170: 1, 171: 1, 163: 1,  # admin calls
}  # fmt: skip
_CLONE_THREAD = 0x10000


def _seccomp_program() -> list[tuple[int, int, int, int]]:
    """The BPF filter as (code, jt, jf, k) rows: x86-64 only, refuse `_DENIED_SYSCALLS`,
    open/openat with write flags, and clone without CLONE_THREAD; allow the rest."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, errno, kill = 0x7FFF0000, 0x00050000, 0x80000000
    arch_x86_64 = 0xC000003E
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, arch_x86_64), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    prog += [(jge, 0, 1, 0x40000000), (ret, 0, 0, errno | 1)]  # the x32 ABI
    for nr, err in sorted(_DENIED_SYSCALLS.items()):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, errno | err)]
    for nr, arg, mask, refuse_if_set in ((2, 1, _WRITE_FLAGS, True), (257, 2, _WRITE_FLAGS, True),
                                          (56, 0, _CLONE_THREAD, False)):  # fmt: skip
        jt, jf = (0, 1) if refuse_if_set else (1, 0)
        prog += [(jeq, 0, 4, nr), (ld, 0, 0, 16 + 8 * arg), (jset, jt, jf, mask)]
        prog += [(ret, 0, 0, errno | 1), (ret, 0, 0, allow)]
    prog.append((ret, 0, 0, allow))
    return prog


def _install_seccomp() -> bool:
    """Install the seccomp filter in this process (irreversible); False where unsupported."""
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rows = _seccomp_program()

        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                        ("k", ctypes.c_uint)]  # fmt: skip

        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

        table = (Filter * len(rows))(*[Filter(*row) for row in rows])
        program = Program(len(rows), table)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            return False
        return libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
    except Exception:
        return False


def confine() -> None:
    """Confine the current process for good: seccomp filter (where supported), then the audit hook."""
    _install_seccomp()
    sys.addaudithook(_audit)


def _read_exact(stream, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _worker_main(memory: int, cpu: int) -> None:
    """Worker: set limits, read (preload, setup) and run them, confine, then answer one framed
    request at a time with one JSON line."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out, stdin = sys.stdout.buffer, sys.stdin.buffer
    try:
        header = _read_exact(stdin, _HEADER.size)
        preload, setup = pickle.loads(_read_exact(stdin, _HEADER.unpack(header)[0]))
        for module in preload:
            __import__(module)
        for kind, *args in setup:
            HANDLERS[kind](*args)
    except Exception as e:
        out.write(json.dumps({"ready": False, "error": repr(e)[:200]}).encode() + b"\n")
        out.flush()
        return
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the per-request alarm ends the process
    confine()
    out.write(b'{"ready": true}\n')
    out.flush()
    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return
        body = _read_exact(stdin, _HEADER.unpack(header)[0])
        if body is None:
            return
        kind, args, timeout = pickle.loads(body)
        signal.setitimer(signal.ITIMER_REAL, timeout + 1.0)
        try:
            reply = {"ok": True, "value": HANDLERS[kind](*args)}
        except BaseException:  # the scorer failed (or refused something): the caller's default
            reply = {"ok": False, "value": None}
        signal.setitimer(signal.ITIMER_REAL, 0)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        reply["cpu"] = usage.ru_utime + usage.ru_stime
        try:
            line = json.dumps(reply)
        except (TypeError, ValueError):
            line = json.dumps({"ok": False, "value": None, "cpu": reply["cpu"]})
        out.write(line.encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), int(sys.argv[2]))
