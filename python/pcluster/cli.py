"""`pcluster submit | jobs | attach | cancel | run`: managing pcluster jobs, no MPI needed.

The `pcluster` program hands these subcommands to this module before it touches MPI
(`python3 -m pcluster.cli SUBCOMMAND ...`). See docs/slurm.md.

    pcluster submit -N 2 -n 64 -t 01:00:00 -p debug [--account A --qos Q] [-- extra sbatch options]
    pcluster jobs
    pcluster attach JOBID [--ipython] [--sshserver user@login]
    pcluster cancel JOBID...
    pcluster run driver.py [args...]       # inside a batch job (or with -n N on one machine)
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

# Exit statuses: 0 done, 1 an error, 2 bad usage, 3 the job is still queued after --wait.
EXIT_ERROR, EXIT_USAGE, EXIT_QUEUED = 1, 2, 3


def say(*parts, file=None):
    print("pcluster:", *parts, file=file or sys.stdout, flush=True)


def fail(message, status=EXIT_ERROR):
    print(f"pcluster: error: {message}", file=sys.stderr, flush=True)
    return status


# --------------------------------------------------------------------------- attach helpers
def _hosts_summary(rc):
    """'h1 (3), h2 (4)': the engines' hosts as the job reported them."""
    counts = Counter(e.host for e in rc.engines.values() if e.alive)
    return ", ".join(f"{h} ({n})" for h, n in sorted(counts.items()))


def _client_args(ssh, key):
    parts = []
    if ssh:
        parts.append(f"sshserver={ssh!r}")
    if key:
        parts.append(f"sshkey={key!r}")
    return parts


def _attach_line(job_id, path, default_path, ssh=None, key=None):
    args = [f"job={job_id}" if path == default_path else repr(str(path))] + _client_args(ssh, key)
    return f"import pcluster; rc = pcluster.Client({', '.join(args)})"


def _check_answers(path, ssh, key, timeout=30):
    """Connect once: (engines, hosts summary). Raises the client's error (it names the fix)."""
    import pcluster

    kw = {"sshserver": ssh, "sshkey": key} if ssh else {}
    with pcluster.Client(str(path), timeout=timeout, **kw) as rc:
        return len(rc.ids), _hosts_summary(rc)


def _ready(job_id, path, default_path, args):
    """The job runs and its file is there: check it answers, print how to attach, maybe start
    IPython attached to it."""
    import pcluster

    try:
        n, hosts = _check_answers(path, args.sshserver, args.sshkey)
    except pcluster.NoJobError as e:
        return fail(f"job {job_id} runs, but this host cannot attach to it: {e}\n"
                    f"  (it keeps running: `pcluster cancel {job_id}` ends it)")
    line = _attach_line(job_id, path, default_path, args.sshserver, args.sshkey)
    say(f"job {job_id} ready: {n} engine{'' if n == 1 else 's'} on {hosts}; connection file {path}")
    say(f"attach from Python:  {line}")
    say(f"end it with `pcluster cancel {job_id}` (or rc.shutdown())")
    if getattr(args, "ipython", False):
        return _exec_ipython(job_id, path, args)
    return 0


def _exec_ipython(job_id, path, args):
    """Replace this process with IPython, attached (rc: the client, dv = rc[:], %px ready)."""
    kw = ", ".join([repr(str(path)), "timeout=30"] + _client_args(args.sshserver, args.sshkey))
    code = (f"import pcluster; rc = pcluster.Client({kw}); dv = rc[:]; rc[:].activate(); "
            f"print('pcluster job {job_id}: rc =', rc, ' dv = rc[:]  (%px runs a line on every engine)'); "
            f"print('the job keeps running when you leave: pcluster cancel {job_id} ends it')")
    argv = [sys.executable, "-m", "IPython", "--no-banner", "-i", "-c", code]
    try:
        import IPython  # noqa: F401
    except ImportError:
        return fail(f"IPython is not installed for {sys.executable} (Debian: apt-get install python3-ipython); "
                    f"attach with: {sys.executable} -i -c {shlex.quote(code)}")
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def _wait_job(job, wait, quiet=False):
    """job.wait with a progress line; (path, None) or (None, exit status)."""
    from . import slurm

    try:
        return job.wait(wait, progress=None if quiet else True), None
    except slurm.JobCannotStart as e:
        return None, fail(str(e), EXIT_QUEUED)
    except slurm.JobWaitTimeout as e:
        return None, fail(str(e), EXIT_QUEUED)
    except slurm.SlurmError as e:
        return None, fail(str(e))


# --------------------------------------------------------------------------- submit
def _split_extra(argv):
    """(own arguments, sbatch options after `--`)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def cmd_submit(argv):
    own, extra = _split_extra(argv)
    p = argparse.ArgumentParser(
        prog="pcluster submit",
        description="Submit a pcluster job with sbatch (the batch script comes from slurm/pcluster.sbatch), "
                    "wait until it runs and its connection file exists (bounded, with its state and pending "
                    "reason), check it answers and print how to attach.",
        epilog="Options after `--` go to sbatch as they are, e.g. `-- --mem=0 --constraint=ib`. "
               "Exit status: 0 ready, 1 error (sbatch refused the job, the job failed), 3 still queued after --wait.")
    p.add_argument("-N", "--nodes", help="nodes (sbatch -N)")
    p.add_argument("-n", "--ntasks", help="MPI tasks: the controller plus ntasks-1 engines (sbatch -n)")
    p.add_argument("-t", "--time", help="time limit, e.g. 01:00:00 (sbatch -t)")
    p.add_argument("-p", "--partition", help="partition (sbatch -p; `sinfo` lists them)")
    p.add_argument("-A", "--account", help="account to charge (sbatch -A)")
    p.add_argument("-q", "--qos", help="quality of service (sbatch -q)")
    p.add_argument("-J", "--job-name", default="pcluster", help="job name (default pcluster; `pcluster jobs` lists "
                   "jobs whose name starts with pcluster)")
    p.add_argument("-o", "--output", help="the job's output file (default <connection dir>/slurm-%%j.out)")
    p.add_argument("--connection-dir", help="where the job writes slurm-<job id>.json: a directory every node and "
                   "this host see (default $PCLUSTER_CONNECTION_DIR or ~/.pcluster)")
    p.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="`module load NAME` in the job (repeatable)")
    p.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run in the job before pcluster starts (repeatable), e.g. 'source ~/venv/bin/activate'")
    p.add_argument("--launcher", choices=["auto", "srun", "mpirun"], default="auto",
                   help="how the job starts its ranks (default auto: Open MPI's mpirun --enable-recovery, else srun "
                   "--mpi=pmix, else mpirun)")
    p.add_argument("--ip", help="where the job's bridge listens (pcluster --ip; default: the address of the "
                   "interface that reaches this host)")
    p.add_argument("--network", help="Open MPI's TCP network for the job, an interface or CIDR (e.g. ib0, 10.1.0.0/16)")
    p.add_argument("--template", help="another batch template (default slurm/pcluster.sbatch)")
    p.add_argument("--wait", type=float, default=600, metavar="SECONDS",
                   help="how long to wait for the job to start (default 600; it stays queued after)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    p.add_argument("--parsable", action="store_true", help="print only the job id (implies --no-wait)")
    p.add_argument("--ipython", action="store_true", help="once ready, start IPython attached to the job")
    p.add_argument("--sshserver", help="attach through ssh to this host (user@host[:port]) when the nodes cannot be "
                   "reached directly")
    p.add_argument("--sshkey", help="the ssh key for --sshserver")
    p.add_argument("--print-script", action="store_true", help="print the batch script and do not submit it")
    args = p.parse_args(own)
    from . import slurm

    opts = dict(job_name=args.job_name, output=args.output, connection_dir=args.connection_dir, modules=args.module,
                setup=args.setup, launcher=args.launcher, ip=args.ip, network=args.network, template=args.template)
    res = (args.nodes, args.ntasks, args.time, args.partition, args.account, args.qos)
    try:
        if args.print_script:
            sys.stdout.write(slurm.render_script(*res, **opts))
            return 0
        job = slurm.submit(*res, extra=extra, **opts)
    except (slurm.SlurmError, OSError, ValueError) as e:
        return fail(str(e))
    if args.parsable:
        print(job.id, flush=True)
        return 0
    rec = None
    try:
        rec = job.record()
    except slurm.SlurmError:
        pass
    what = ""
    if rec:
        lo, _, hi = rec.get("NumNodes", "?").partition("-")
        nodes = lo if hi in ("", lo) else f"{lo}-{hi}"
        what = f" ({nodes} node{'' if nodes == '1' else 's'}, {rec.get('NumTasks', '?')} tasks)"
    say(f"submitted job {job.id}{what}; script {job.script_file}")
    if rec and slurm._output_path(rec):
        say(f"its output: {slurm._output_path(rec)}")
    if args.no_wait:
        say(f"attach once it runs: pcluster attach {job.id}")
        return 0
    return _wait_then_ready(job, args)


def _wait_then_ready(job, args):
    """Waits (bounded by --wait) for the job's connection file, then checks and prints how to attach."""
    from . import slurm

    path, status = _wait_job(job, args.wait)
    if path is None:
        return status
    return _ready(job.id, path, str(slurm.connection_file_for_job(job.id)), args)


# --------------------------------------------------------------------------- jobs
def cmd_jobs(argv):
    p = argparse.ArgumentParser(prog="pcluster jobs", description="This user's pcluster jobs (from scontrol: "
                                "no accounting needed): id, state, nodes, engines, connection file.")
    p.add_argument("--all", action="store_true", help="also jobs that ended recently")
    p.add_argument("--connection-dir", help="where to look for connection files (default $PCLUSTER_CONNECTION_DIR "
                   "or ~/.pcluster)")
    p.add_argument("--json", action="store_true", help="one JSON list")
    args = p.parse_args(argv)
    from . import slurm

    try:
        rows = slurm.jobs(all_jobs=args.all, connection_dir=args.connection_dir)
    except slurm.SlurmError as e:
        return fail(str(e))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        say("no pcluster jobs of yours in SLURM's queue (start one with `pcluster submit -N 2 -n 16 -t 1:00:00`)")
        return 0
    table = [("JOBID", "STATE", "TIME", "NODES", "ENGINES", "CONNECTION FILE")]
    for r in rows:
        state = r["state"] + (f" ({r['reason']})" if r["state"] == "PENDING" and r["reason"] else "")
        if r["engines"] is not None:
            engines = str(r["engines"])
        else:
            engines = f"({r['ntasks'] - 1})" if r["ntasks"] else "?"
        cf = r["connection_file"] or ("-" if r["state"] != "RUNNING" else "(not written yet)")
        table.append((r["id"], state, r["time"], r["nodes"] or "-", engines, cf))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


# --------------------------------------------------------------------------- attach
def cmd_attach(argv):
    p = argparse.ArgumentParser(prog="pcluster attach", description="Check that a running pcluster job answers "
                                "and print how to attach to it (or start IPython attached).")
    p.add_argument("job", help="the SLURM job id")
    p.add_argument("--wait", type=float, default=30, metavar="SECONDS",
                   help="how long to wait for a job that is not running yet (default 30)")
    p.add_argument("--connection-dir", help="where the job wrote its connection file (default "
                   "$PCLUSTER_CONNECTION_DIR or ~/.pcluster)")
    p.add_argument("--sshserver", help="attach through ssh to this host (user@host[:port])")
    p.add_argument("--sshkey", help="the ssh key for --sshserver")
    p.add_argument("--ipython", action="store_true", help="start IPython attached to the job")
    args = p.parse_args(argv)
    from . import slurm

    try:
        job = slurm.Job(args.job, connection_file=slurm.connection_file_for_job(args.job, args.connection_dir))
    except ValueError as e:
        return fail(str(e), EXIT_USAGE)
    return _wait_then_ready(job, args)


# --------------------------------------------------------------------------- cancel
def cmd_cancel(argv):
    p = argparse.ArgumentParser(prog="pcluster cancel", description="Cancel pcluster jobs (scancel); attached "
                                "clients are told the job ended.")
    p.add_argument("jobs", nargs="+", help="SLURM job ids")
    args = p.parse_args(argv)
    from . import slurm

    status = 0
    for jid in args.jobs:
        try:
            job = slurm.Job(jid)
            rec = job.record()
            if rec is None:
                status = fail(f"SLURM does not know job {jid} (it ended a while ago, or never existed)")
                continue
            before = rec.get("JobState")
            if before in slurm.ENDED:
                say(f"job {jid} had already ended ({before})")
                continue
            after = job.cancel()
            say(f"job {jid} cancelled (it was {before}; now {after})")
        except (slurm.SlurmError, ValueError) as e:
            status = fail(str(e))
    return status


# --------------------------------------------------------------------------- run
def _pcluster_program():
    from . import slurm

    exe = slurm._core.setting("PCLUSTER_EXE") or shutil.which("pcluster") or slurm._pcluster_exe()
    if not exe:
        raise FileNotFoundError("the pcluster program is not on PATH (set PCLUSTER_EXE to it)")
    return exe


def _is_open_mpi(mpirun):
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out or "OpenRTE" in out


def _srun_has_pmix():
    try:
        out = subprocess.run(["srun", "--mpi=list"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "pmix" in (out.stdout + out.stderr)


def launch_command(launcher, ntasks=None, in_slurm=None):
    """How `pcluster run` starts the job's ranks, so that it outlives an engine's death: mpirun
    --enable-recovery (Open MPI), or srun --mpi=pmix --kill-on-bad-exit=0."""
    in_slurm = bool(os.environ.get("SLURM_JOB_ID")) if in_slurm is None else in_slurm
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    if launcher == "auto":
        # As slurm/pcluster.sbatch: Open MPI's mpirun --enable-recovery survives any engine's death
        # (SLURM's PMIx plugin kills an srun step when a rank dies next to others).
        if mpirun and _is_open_mpi(mpirun):
            launcher = "mpirun"
        else:
            launcher = "srun" if in_slurm and shutil.which("srun") and _srun_has_pmix() else "mpirun"
    if launcher == "srun":
        cmd = ["srun", "--mpi=pmix", "--kill-on-bad-exit=0"]
        return cmd + (["-n", str(ntasks)] if ntasks else [])
    if not mpirun:
        raise FileNotFoundError("mpirun not found on PATH (load your MPI module)")
    cmd = [mpirun]
    if _is_open_mpi(mpirun):
        cmd.append("--enable-recovery")
        if not in_slurm:
            cmd.append("--oversubscribe")
    if ntasks:
        cmd += ["-n", str(ntasks)]
    return cmd


def cmd_run(argv):
    p = argparse.ArgumentParser(
        prog="pcluster run",
        description="Start a pcluster job, run DRIVER as its client, end the job. Inside a SLURM batch job or "
                    "allocation the job takes every task of it (srun, else mpirun); elsewhere give -n.",
        epilog="DRIVER finds the job with pcluster.Client() (PCLUSTER_CONNECTION_FILE is set for it). "
               "The exit status is DRIVER's.")
    p.add_argument("-n", "--ntasks", type=int, help="MPI tasks (controller + engines); default: the allocation's")
    p.add_argument("--launcher", choices=["auto", "srun", "mpirun"], default="auto")
    p.add_argument("-f", "--connection-file", help="the job's connection file (default: the usual one)")
    p.add_argument("--ip", help="where the job's bridge listens (pcluster --ip)")
    p.add_argument("--wait", type=float, default=300, metavar="SECONDS", help="how long the job may take to start")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="DRIVER [ARGS...]",
                   help="a Python script (run with this Python) or a program")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.print_usage(sys.stderr)
        return fail("give the driver to run: pcluster run driver.py [args...]", EXIT_USAGE)
    in_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    if not in_slurm and not args.ntasks:
        return fail("not inside a SLURM job: give -n N to start N ranks on this machine with mpirun, or run it "
                    "inside sbatch/salloc", EXIT_USAGE)
    from . import _core

    path = Path(args.connection_file or _core.default_connection_file()).expanduser().absolute()
    try:
        launch = launch_command(args.launcher, args.ntasks, in_slurm)
        exe = _pcluster_program()
    except FileNotFoundError as e:
        return fail(str(e))
    cmd = launch + [exe, "--connection-file", str(path)] + (["--ip", args.ip] if args.ip else [])
    driver = command[0]
    if driver.endswith(".py") or not os.access(driver, os.X_OK):
        command = [sys.executable] + command
    try:
        before = path.read_bytes()
    except OSError:
        before = None
    env = dict(os.environ)
    env.pop("PCLUSTER_CONNECTION_FILE", None)
    say(f"starting the job: {shlex.join(cmd)}")
    job = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
    drv = None
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        deadline = time.monotonic() + args.wait
        while True:
            try:
                data = path.read_bytes()
                if data != before:
                    json.loads(data)
                    break
            except (OSError, ValueError):
                pass
            if job.poll() is not None:
                return fail(f"the job ended (exit status {job.returncode}) before it was ready; its messages are above")
            if time.monotonic() > deadline:
                return fail(f"the job did not write {path} within {args.wait:g} s; its messages are above")
            time.sleep(0.1)
        say(f"job ready; running {shlex.join(command)}")
        drv = subprocess.Popen(command, env={**os.environ, "PCLUSTER_CONNECTION_FILE": str(path)})
        rc_driver = drv.wait()
        return rc_driver
    except KeyboardInterrupt:
        why = "SIGTERM (scancel or the time limit)" if stopping else "Ctrl-C"
        say(f"{why}: stopping the driver and the job", file=sys.stderr)
        return 128 + (stopping[0] if stopping else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, old)
        if drv is not None and drv.poll() is None:
            _stop(drv, 5)
        # After a SIGTERM, SLURM signalled the job's ranks too: no shutdown through a client.
        _end_job(job, path, polite=not stopping)


def _stop(proc, grace):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _end_job(job, path, polite=True):
    """Shut the job down through a client (unless the driver did), then wait for the launcher;
    every step bounded."""
    if polite and job.poll() is None and path.exists():
        try:
            import pcluster

            with pcluster.Client(str(path), timeout=10) as rc:
                rc.shutdown(timeout=30)
        except Exception as e:  # the job may be gone already or broken: the launcher is stopped below
            if job.poll() is None:
                say(f"could not shut the job down through a client ({e}); stopping its launcher", file=sys.stderr)
    try:
        job.wait(60 if polite else 10)
    except subprocess.TimeoutExpired:
        _stop(job, 10)


# --------------------------------------------------------------------------- main
COMMANDS = {"submit": cmd_submit, "jobs": cmd_jobs, "attach": cmd_attach, "cancel": cmd_cancel, "run": cmd_run}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            return fail(f"unknown subcommand {argv[0]!r}: use one of {', '.join(COMMANDS)}", EXIT_USAGE)
        return 0 if argv else EXIT_USAGE
    try:
        return COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
