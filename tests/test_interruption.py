"""Runs that are stopped: SIGTERM and SIGINT save and resume bit-identically (one process and
two), a second Ctrl-C stops at once, kill -9 leaves no grain worker behind, and one workdir
holds one training run (its lock; a dead holder's lock is taken over)."""

import contextlib
import errno
import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, TINY_CONFIG, tiny_config

from jaxseg import preemption
from jaxseg.errors import WorkdirLockedError
from jaxseg.preemption import StopSignals
from jaxseg.report.writer import read_metrics
from jaxseg.run import build_run, load_run
from jaxseg.run.checkpoint import INTEGRITY_FILE, Checkpointer
from jaxseg.run.resume import resume_or_start
from jaxseg.train import workdir as workdir_module
from jaxseg.train.loop import train_and_evaluate
from jaxseg.train.workdir import LOCK_FILE, WorkdirLock, lock_for_training

# Long enough never to end by itself: these runs end by a signal.
ENDLESS = ("--config.train.num_steps=1000000", "--config.optim.schedule=constant")


def _as_from_a_terminal(block_sigint: bool = False):
    """The child's signals as a shell's foreground job has them: SIGINT and SIGTERM at their
    defaults. An ignored disposition is inherited across exec: pytest started as a
    background job of a non-interactive shell (`pytest &`, `nohup`) ignores SIGINT, and so
    would train.py (a terminal sends Ctrl-C only to foreground jobs, whose SIGINT is
    default)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    if block_sigint:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _train_py(workdir, data_dir, *overrides, devices=4, block_sigint=False, **popen):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    command = [sys.executable, str(REPO / "train.py"), "--config", f"{TINY_CONFIG}:{data_dir}"]
    return subprocess.Popen(
        [*command, "--workdir", str(workdir), *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(_as_from_a_terminal, block_sigint),
        **popen,
    )


def _wait_for_logged_steps(workdir, processes, count):
    """Returns once `count` training steps are in metrics.jsonl (fails if a process ends)."""
    path = os.path.join(workdir, "metrics.jsonl")
    for _ in range(1200):
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"training ended early: {process.communicate()[1][-3000:]}")
        if os.path.exists(path):
            with open(path) as f:
                if sum(1 for line in f if line.endswith("\n")) >= count:
                    return
        time.sleep(0.1)
    pytest.fail("no training steps were logged")


def _saved_step(stderr: str) -> int:
    assert "jaxseg interrupted:" in stderr and "Traceback" not in stderr, stderr[-3000:]
    return int(re.search(r"saved a checkpoint at step (\d+)", stderr).group(1))


def _constant_config(data_dir, num_steps, **overrides):
    return tiny_config(
        data_dir, **{"optim.schedule": "constant", "train.num_steps": num_steps, **overrides}
    )


def _straight(run, steps):
    """(state, batches) of `run` trained `steps` steps from scratch, by hand."""
    state, batches = run.init_state(), run.train_batches()
    for _ in range(steps):
        state, _ = run.train_step(state, run.layout.put_batch(next(batches)), run.step_rng)
    return state, batches


def _assert_continues_bit_identically(run, resumed, straight, steps=2):
    (state_a, batches_a), (state_b, batches_b) = resumed, straight
    for _ in range(steps):
        batch_a, batch_b = next(batches_a), next(batches_b)
        jax.tree.map(np.testing.assert_array_equal, batch_a, batch_b)
        state_a, _ = run.train_step(state_a, run.layout.put_batch(batch_a), run.step_rng)
        state_b, _ = run.train_step(state_b, run.layout.put_batch(batch_b), run.step_rng)
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def test_sigterm_and_sigint_save_and_the_run_resumes_bit_identically(data_dir, tmp_path):
    run = build_run(_constant_config(data_dir, 1_000_000))  # builds the dataset once, first
    trainers = {
        # Logging every 2 steps: a stop between logs logs the steps since, with their seconds.
        signal.SIGTERM: _train_py(
            tmp_path / "SIGTERM", data_dir, *ENDLESS, "--config.train.log_every=2"
        ),
        # Ctrl-C in a terminal reaches the whole process group.
        signal.SIGINT: _train_py(tmp_path / "SIGINT", data_dir, *ENDLESS, start_new_session=True),
    }
    for signum, trainer in trainers.items():
        _wait_for_logged_steps(tmp_path / signum.name, [trainer], 3)
        if signum == signal.SIGINT:
            os.killpg(trainer.pid, signum)
        else:
            trainer.send_signal(signum)
    for signum, trainer in trainers.items():
        workdir = tmp_path / signum.name
        _, stderr = trainer.communicate(timeout=300)
        assert trainer.returncode == 4, stderr[-3000:]
        step = _saved_step(stderr)
        assert f"{signum.name} at step {step}" in stderr and "Run the same command again" in stderr
        assert os.listdir(workdir / "checkpoints") == [str(step)]
        assert LOCK_FILE not in os.listdir(workdir)  # released on the way out
        logged = [r for r in read_metrics(str(workdir / "metrics.jsonl")) if r["split"] == "train"]
        assert logged[-1]["step"] == step
        assert logged[-1]["train_seconds"] == pytest.approx(sum(r["seconds"] for r in logged))

        checkpointer = Checkpointer(str(workdir / "checkpoints"), read_only=True)
        state, batches, start, _ = resume_or_start(run, checkpointer, str(workdir))
        checkpointer.close()
        assert start == step and batches.get_state() == {"position": step * 8}
        _assert_continues_bit_identically(run, (state, batches), _straight(run, step))


def test_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
        assert signals.should_stop(1) and signals.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before


# Saves one checkpoint, says so, and goes on without waiting for it (a training run).
SAVES_AND_GOES_ON = """
import sys, time
import numpy as np
from jaxseg.run.checkpoint import Checkpointer

checkpointer = Checkpointer(sys.argv[1])
checkpointer.save(1, {"w": np.arange(4096, dtype=np.float32)}, {"position": 8}, {})
print("saving", flush=True)
time.sleep(600)
"""


def test_kill_9_soon_after_a_save_has_committed_leaves_it_recorded(tmp_path):
    """The integrity record is written as soon as the save commits, not at the next save:
    a run killed (kill -9, OOM, power loss) a moment later leaves a verified checkpoint."""
    trainer = subprocess.Popen(
        [sys.executable, "-c", SAVES_AND_GOES_ON, str(tmp_path / "checkpoints")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert trainer.stdout.readline().strip() == "saving"
    step_dir = tmp_path / "checkpoints" / "1"
    for _ in range(3000):  # orbax commits: the step directory takes its final name
        if step_dir.is_dir():
            break
        time.sleep(0.01)
    for _ in range(300):  # at most 3 s later
        if (step_dir / INTEGRITY_FILE).exists():
            break
        time.sleep(0.01)
    trainer.kill()
    trainer.wait()
    assert step_dir.is_dir() and (step_dir / INTEGRITY_FILE).exists()
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    assert checkpointer.all_steps() == [1] and checkpointer.integrity_problem(1) is None
    checkpointer.close()


@pytest.fixture
def start_up_handler(monkeypatch):
    """The SIGINT handler the tools install before their imports, with fresh state."""
    monkeypatch.setattr(preemption, "_early", {"phase": "importing", "pending": 0, "second": False})
    previous = signal.signal(signal.SIGINT, preemption._on_early_interrupt)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_while_a_tool_imports_stops_it_once_it_can(start_up_handler):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # noted, not raised: a KeyboardInterrupt in an import is a traceback
    with pytest.raises(KeyboardInterrupt):
        preemption.arm_interrupts()  # cli.run's first step


def test_a_ctrl_c_while_a_run_starts_up_waits_for_a_safe_point(start_up_handler, capfd):
    """Never raised where it arrives (once inside JAX's `_xla_gc_callback`, which swallowed
    it: the run trained to its end); the run stops before its first step."""
    preemption.arm_interrupts()
    StopSignals.training_starts()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert "SIGINT: stopping at the next safe point" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        with StopSignals():
            pytest.fail("the loop began")
    assert preemption.describe_interrupt().startswith("stopped by Ctrl-C before the first")
    with pytest.raises(KeyboardInterrupt):  # a second one stops at once
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)


@pytest.mark.parametrize("inherited_mask", ["default", "sigint_blocked"])
def test_one_ctrl_c_while_train_py_starts_up_stops_it_cleanly(data_dir, tmp_path, inherited_mask):
    """Ctrl-C once, in the seconds before the first step (restoring, compiling): the run
    stops, saying so, and leaves nothing behind; also when it was started with SIGINT
    blocked (a mask is inherited: the full suite's worker once had one, and the run
    trained on)."""
    build_run(tiny_config(data_dir))  # builds the dataset once, first
    workdir = tmp_path / "run"
    blocked = inherited_mask == "sigint_blocked"
    trainer = _train_py(workdir, data_dir, *ENDLESS, start_new_session=True, block_sigint=blocked)
    for _ in range(6000):  # the lock is taken after the data is built, before compiling
        if (workdir / LOCK_FILE).exists() or trainer.poll() is not None:
            break
        time.sleep(0.01)
    assert (workdir / LOCK_FILE).exists()
    os.killpg(trainer.pid, signal.SIGINT)
    _, stderr = trainer.communicate(timeout=300)
    assert "Traceback" not in stderr and "Ctrl-C twice" not in stderr, stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    saved = [n for n in os.listdir(checkpoints) if n.isdigit()] if checkpoints.exists() else []
    if trainer.returncode == 130:  # it stopped before the first step (almost always)
        assert (
            "\njaxseg: stopped by Ctrl-C before the first training step; there was nothing new"
            " to save\n"
        ) in stderr
        assert saved == []
    else:  # Python could not raise it where it arrived: the loop saved at the first step
        assert trainer.returncode == 4, stderr[-3000:]
        assert saved == [str(_saved_step(stderr))]
    assert LOCK_FILE not in os.listdir(workdir)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_to_one_of_two_processes_saves_all_at_one_step(data_dir, tmp_path):
    """JAX's preemption service: a notice to process 1 stops both at the same step."""
    workdir, port = tmp_path / "multi", _free_port()
    build_run(tiny_config(data_dir))  # builds the dataset once, before the processes read it
    processes = [
        _train_py(
            workdir,
            data_dir,
            *ENDLESS,
            "--config.train.num_devices=0",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            devices=2,
        )
        for i in range(2)
    ]
    _wait_for_logged_steps(workdir, processes, 2)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [4, 4], outputs[0][-2000:] + outputs[1][-2000:]
    steps = {_saved_step(stderr) for stderr in outputs}
    assert len(steps) == 1
    assert os.listdir(workdir / "checkpoints") == [str(steps.pop())]


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if name.isdigit() and int(fields[1]) == pid:
            found.append(int(name))
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _spawned_workers(pid: int) -> list[int]:
    """The running processes that `pid` started with multiprocessing's spawn (grain's
    workers; not its resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read() and _running(child):
                    found.append(child)
        except OSError:
            continue
    return found


# A trainer's input side: it holds a workdir's lock and reads batches from 2 grain worker
# processes. The test sends SIGINT to its process group while the workers start, and again
# after "ready"; then a line.
PIPELINE_WITH_WORKERS = """
import signal, sys, time
import numpy as np
from absl import flags
from jaxseg.data.pipeline import LoaderConfig, batches, train_dataset
from jaxseg.data.transforms import AugmentConfig
from jaxseg.train.workdir import WorkdirLock

flags.FLAGS.mark_as_parsed()
WorkdirLock(sys.argv[1]).acquire()
interrupted = []
signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
example = {"image": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((8, 8), np.int32)}
loader = LoaderConfig(2, num_workers=2, prefetch=1)
stream = batches(train_dataset([example] * 8, AugmentConfig(), loader, seed=0))
next(stream)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(8):
    next(stream)
print("served after SIGINT", len(interrupted), flush=True)
time.sleep(600)
"""


def test_workers_ignore_sigint_and_end_with_a_killed_trainer_whose_lock_is_taken_over(
    tmp_path, capsys
):
    trainer = subprocess.Popen(
        [sys.executable, "-c", PIPELINE_WITH_WORKERS, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    # Ctrl-C while the workers start: each takes seconds to import its modules, before
    # grain runs its init function (the one that makes it ignore the signal).
    for _ in range(6000):
        workers = _spawned_workers(trainer.pid)
        if len(workers) == 2 or trainer.poll() is not None:
            break
        time.sleep(0.01)
    assert len(workers) == 2, workers
    os.killpg(trainer.pid, signal.SIGINT)
    assert trainer.stdout.readline().strip() == "ready"
    os.killpg(trainer.pid, signal.SIGINT)  # and while they serve batches
    trainer.stdin.write("go\n")
    trainer.stdin.flush()
    assert trainer.stdout.readline().strip() == "served after SIGINT 2"
    assert all(_running(pid) for pid in workers)

    trainer.kill()
    trainer.wait()
    for _ in range(300):  # each worker looks for its parent every second
        if not any(_running(pid) for pid in workers):
            break
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers)

    assert LOCK_FILE in os.listdir(tmp_path)  # the killed trainer could not release it
    capsys.readouterr()
    with lock_for_training(str(tmp_path)) as lock:
        assert lock.took_over["pid"] == trainer.pid
    assert f"from pid {trainer.pid} on host {socket.gethostname()}" in capsys.readouterr().out
    assert LOCK_FILE not in os.listdir(tmp_path)


def _snapshot(directory):
    """Every path under `directory` with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            stat = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), directory)] = (
                stat.st_size,
                stat.st_mtime_ns,
            )
    return found


@pytest.fixture
def held_workdir(data_dir, tmp_path):
    """A run (a checkpoint at step 1) whose workdir another process holds locked."""
    workdir = tmp_path / "held"
    run = build_run(tiny_config(data_dir))
    with contextlib.closing(Checkpointer(str(workdir / "checkpoints"))) as checkpointer:
        checkpointer.save(1, run.init_state(), {"position": 8}, run.record())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from jaxseg.train.workdir import WorkdirLock;"
            " WorkdirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
            str(workdir),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    yield workdir, holder
    holder.kill()
    holder.wait()


def test_a_second_run_is_refused_and_reading_the_run_stays_allowed(data_dir, held_workdir):
    workdir, holder = held_workdir
    before = _snapshot(workdir)
    with pytest.raises(
        WorkdirLockedError,
        match=f"is in use by another training run: pid {holder.pid} on host {socket.gethostname()}",
    ):
        train_and_evaluate(tiny_config(data_dir, **{"train.num_steps": 4}), str(workdir))
    assert load_run(str(workdir)).step == 1  # read-only: no lock needed, nothing created
    assert _snapshot(workdir) == before

    second = _train_py(workdir, data_dir, devices=1)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 2
    assert "jaxseg workdir in use:\n" in stderr and "Traceback" not in stderr, stderr
    assert f"pid {holder.pid} on host {socket.gethostname()}" in stderr
    assert _snapshot(workdir) == before


def test_without_flock_a_lock_file_of_a_dead_holder_is_taken_over(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(workdir_module.fcntl, "flock", no_flock)
    first = WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()} on host"):
        WorkdirLock(str(tmp_path)).acquire()
    first.release()
    assert not os.path.exists(tmp_path / LOCK_FILE)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(
        f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "started": "earlier"}}'
    )
    lock = WorkdirLock(str(tmp_path)).acquire()
    assert lock.took_over["pid"] == dead.pid
    lock.release()

    (tmp_path / LOCK_FILE).write_text('{"pid": 1, "host": "another-host", "started": "x"}')
    with pytest.raises(WorkdirLockedError, match="cannot tell whether it still runs; remove"):
        WorkdirLock(str(tmp_path)).acquire()


def test_a_ctrl_c_during_the_handover_to_the_loop_handler_is_not_lost(monkeypatch):
    """A Ctrl-C noted by the start-up handler while the loop's handler is being installed
    still stops the run before its first step (it was lost before: the run trained on)."""
    monkeypatch.setattr(preemption, "_early", {"phase": "starting", "pending": 0, "second": False})
    install = signal.signal

    def install_while_a_ctrl_c_arrives(signum, handler):
        previous = install(signum, handler)
        if signum == signal.SIGINT:
            preemption._early["pending"] += 1  # the start-up handler noted one just now
        return previous

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(preemption.signal, "signal", install_while_a_ctrl_c_arrives)
    with pytest.raises(KeyboardInterrupt):
        with StopSignals():
            pytest.fail("the loop began")
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back
