"""pcluster jobs on a SLURM cluster: submit, follow, attach, cancel.

    import pcluster.slurm
    job = pcluster.slurm.submit(nodes=2, ntasks=64, time="1:00:00", partition="debug", extra=["--mem=0"])
    rc = job.client(timeout=300)      # waits for the job to start (state and reason shown), connects
    job.state, job.reason, job.nodes, job.connection_file, job.output_file
    job.cancel()
    pcluster.slurm.jobs()             # this user's pcluster jobs

The batch script comes from slurm/pcluster.sbatch (data, usable on its own with sbatch). Job
states come from `scontrol show job` (it works without SLURM's accounting database); sacct is
only asked about jobs scontrol has forgotten. Every wait is bounded. See docs/slurm.md.
"""

import json
import os
import pwd
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from . import _core
from .error import NoJobError, PclusterError

TEMPLATE_NAME = "pcluster.sbatch"
SETTINGS_MARK = "# @pcluster-settings@"
COMMAND_TIMEOUT = 60.0  # s for one SLURM command (a busy slurmctld can be slow)

# States after which a job never runs again (COMPLETING: ending, its processes being killed).
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "COMPLETING", "DEADLINE", "FAILED", "NODE_FAIL",
         "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT", "STOPPED"}
STARTED = {"RUNNING", "CONFIGURING"}

STATE_MEANING = {
    "BOOT_FAIL": "its nodes failed to boot",
    "CANCELLED": "it was cancelled (scancel, an administrator, or a limit)",
    "COMPLETED": "its script ended (exit status 0)",
    "COMPLETING": "it is ending",
    "DEADLINE": "it reached its --deadline",
    "FAILED": "its script ended with an error",
    "NODE_FAIL": "one of its nodes failed",
    "OUT_OF_MEMORY": "it ran out of memory (ask for more with --mem or --mem-per-cpu)",
    "PREEMPTED": "a job of higher priority preempted it",
    "TIMEOUT": "it reached its time limit (-t/--time)",
}

# Pending reasons (squeue's NODELIST(REASON), scontrol's Reason=) and what they mean.
REASONS = {
    "None": "the scheduler has not looked at it yet",
    "Priority": "jobs of higher priority come first",
    "Resources": "waiting for the nodes it needs to become free",
    "Dependency": "waiting for the jobs it depends on",
    "BeginTime": "its --begin time has not come",
    "JobHeldUser": "held by you (scontrol release <job id>)",
    "JobHeldAdmin": "held by an administrator",
    "Reservation": "waiting for its reservation",
    "Licenses": "waiting for licenses",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "NodeDown": "a node it needs is down",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionConfig": "it asks for more than its partition has (nodes, CPUs, tasks, memory, time): "
                       "it cannot start as submitted",
    "PartitionNodeLimit": "its node count is outside its partition's limits (or the nodes it needs are "
                          "down): it cannot start as submitted",
    "PartitionTimeLimit": "its time limit exceeds its partition's: it cannot start as submitted",
    "BadConstraints": "no node has the features or resources it asks for: it cannot start as submitted",
    "AccountNotAllowed": "its account may not use this partition",
    "QOSNotAllowed": "its QOS may not use this partition",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
}
# Reasons SLURM gives for a job that cannot start as it was submitted (without an administrator
# changing the partition or the nodes coming back): waiting on would only run out the clock.
CANNOT_START = {"PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints",
                "AccountNotAllowed", "QOSNotAllowed", "InvalidAccount", "InvalidQOS"}
CANNOT_START_PREFIXES = ("QOSMax", "AssocMax")  # ...PerJobLimit: a per-job limit of the QOS/account
CANNOT_START_GRACE = 3.0  # s such a reason must persist (the first scheduler passes may differ)


class SlurmError(PclusterError, RuntimeError):
    """A SLURM command is missing or failed."""


class SubmitError(SlurmError):
    """sbatch refused the job; the message is sbatch's own."""


class JobNotRunning(SlurmError, NoJobError):
    """The job ended (failed, was cancelled, ...) or is unknown, so there is nothing to attach to."""


class JobWaitTimeout(SlurmError, NoJobError):
    """The job was not ready within the time given; it stays queued (or running)."""


class JobCannotStart(JobWaitTimeout):
    """SLURM says the job cannot start as it was submitted (PartitionConfig, ...); it stays queued."""


# --------------------------------------------------------------------------- SLURM commands
def _run(argv, timeout=COMMAND_TIMEOUT, env=None, input=None):
    """A SLURM command's CompletedProcess (text); SlurmError if it is missing or hangs."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: run this on a host where SLURM's commands work (a login "
                         f"node; on some sites after `module load slurm`)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(argv)}` did not answer within {timeout:g} s: slurmctld may be down "
                         f"or overloaded (try `scontrol ping`)") from None


def _user():
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER", str(os.getuid()))


def _parse_record(line):
    """One line of `scontrol show job -o` as a dict. Values may hold spaces (JobName, Reason):
    a word that does not start a new Key= belongs to the value before it."""
    out, key = {}, None
    for word in line.split(" "):
        m = re.match(r"^([A-Z][A-Za-z0-9_:/]*)=(.*)$", word)
        if m:
            key = m.group(1)
            out[key] = m.group(2)
        elif key is not None:
            out[key] += " " + word
    return out


def job_record(job_id):
    """scontrol's fields of a job (JobState, Reason, NodeList, NumTasks, StdOut, ...), or None
    when SLURM no longer knows the job (it ended more than MinJobAge ago, or never existed)."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if proc.returncode != 0:
        if "Invalid job id" in proc.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    for line in proc.stdout.splitlines():
        rec = _parse_record(line.strip())
        if rec.get("JobId") == str(job_id):
            return rec
    return None


def job_records():
    """Every job slurmctld knows (queued, running, recently ended), as scontrol's fields."""
    proc = _run(["scontrol", "show", "job", "-o"])
    if proc.returncode != 0:
        raise SlurmError(f"scontrol show job: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    return [_parse_record(line.strip()) for line in proc.stdout.splitlines() if line.startswith("JobId=")]


def expand_hostlist(hostlist):
    """'h[1-2],login' -> ['h1', 'h2', 'login'] (scontrol show hostnames)."""
    if not hostlist or hostlist in ("(null)", "None"):
        return []
    if "[" not in hostlist:
        return hostlist.split(",")
    proc = _run(["scontrol", "show", "hostnames", hostlist])
    return proc.stdout.split() if proc.returncode == 0 else [hostlist]


def _sacct_state(job_id):
    """'FAILED (exit code 1:0)' from sacct where accounting is set up, else None."""
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode"],
                              capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""
    if "|" not in line:
        return None
    state, code = line.split("|", 1)
    return f"{state} (exit code {code})"


def describe_reason(reason):
    """'Resources: waiting for the nodes it needs to become free'."""
    if not reason or reason == "None":
        return "None: " + REASONS["None"]
    base = reason.split(",")[0].strip()
    meaning = REASONS.get(base)
    if meaning is None and base.startswith(CANNOT_START_PREFIXES):
        meaning = "a per-job limit of its QOS or account: it cannot start as submitted"
    return f"{reason}: {meaning}" if meaning else reason


def cannot_start(reason):
    base = (reason or "").split(",")[0].strip()
    return base in CANNOT_START or (base.startswith(CANNOT_START_PREFIXES) and base.endswith("PerJobLimit"))


# --------------------------------------------------------------------------- files
def connection_dir():
    """Where connection files go: $PCLUSTER_CONNECTION_DIR, else ~/.pcluster (see configuration.md)."""
    return Path(_core.connection_dir())


def connection_file_for_job(job_id, directory=None):
    if directory is not None:
        return Path(directory).expanduser().absolute() / f"slurm-{job_id}.json"
    return Path(_core.connection_file_for_job(str(job_id)))


def template_path(name=TEMPLATE_NAME):
    """The batch template: $PCLUSTER_SLURM_TEMPLATE, the package's copy, or slurm/ of the source
    tree this package was built from."""
    env = _core.setting("PCLUSTER_SLURM_TEMPLATE")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    candidates = [here / "slurm" / name]
    candidates += [p / "slurm" / name for p in here.parents]
    candidates += [Path(sys.prefix) / "share" / "pcluster" / "slurm" / name, Path("/usr/local/share/pcluster/slurm") / name]
    for c in candidates:
        if c.is_file():
            return c
    raise SlurmError(f"cannot find the batch template {name} (looked in {', '.join(str(c.parent) for c in candidates[:3])}, ...); "
                     f"set PCLUSTER_SLURM_TEMPLATE to its path (slurm/{name} in pcluster's sources)")


def _tail(path, lines=20):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        return None, f"(its output file {path} cannot be read from here: {e.strerror})"
    rows = text.splitlines()[-lines:]
    return rows, "\n".join("    " + r for r in rows) if rows else "    (empty)"


def _pcluster_exe():
    """The pcluster program for jobs when it is not simply `pcluster` on PATH: $PCLUSTER_EXE (set
    by `pcluster submit`) or the build tree next to this package."""
    env = _core.setting("PCLUSTER_EXE")
    if env:
        return env
    built = Path(os.path.abspath(__file__)).parent.parent.parent / "bin" / "pcluster"
    if built.is_file() and os.access(built, os.X_OK):
        return str(built)
    return None


def _package_parent():
    """The directory to put on PYTHONPATH for engines, when this package is not installed."""
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = ("site-packages", "dist-packages")
    return None if parent.endswith(installed) else parent


# --------------------------------------------------------------------------- the batch script
def render_script(nodes=None, ntasks=None, time=None, partition=None, account=None, qos=None, *,
                  job_name="pcluster", output=None, connection_dir=None, modules=(), setup=(), launcher="auto",
                  pcluster_args=(), ip=None, network=None, template=None):
    """The batch script `submit` sends: the template with #SBATCH lines from these arguments in
    place of its own, and the settings where its "@pcluster-settings@" line stands."""
    path = Path(template) if template else template_path()
    text = path.read_text()
    if SETTINGS_MARK not in text:
        raise SlurmError(f"{path} has no '{SETTINGS_MARK}' line: it is not a pcluster template")
    cdir = Path(connection_dir).expanduser().absolute() if connection_dir else Path(_core.connection_dir())
    directives = [("job-name", job_name), ("nodes", nodes), ("ntasks", ntasks), ("time", time),
                  ("partition", partition), ("account", account), ("qos", qos),
                  ("output", output or str(cdir / "slurm-%j.out"))]
    sbatch = [f"#SBATCH --{k}={v}" for k, v in directives if v not in (None, "")]
    lines, placed = [], False
    for line in text.splitlines():
        if line.startswith("#SBATCH") or line.startswith("##SBATCH"):
            if not placed:
                lines += sbatch
                placed = True
            continue
        lines.append(line)
    if not placed:  # a template without #SBATCH lines: ours go right after the #! line
        lines[1:1] = sbatch

    settings = ["# written by pcluster submit"]
    for m in modules:
        settings.append(f"module load {shlex.quote(m)}")
    settings += list(setup)
    env = {"PCLUSTER_CONNECTION_DIR": str(cdir)}
    if launcher and launcher != "auto":
        if launcher not in ("srun", "mpirun"):
            raise ValueError(f"launcher={launcher!r}: use 'auto', 'srun' or 'mpirun'")
        env["PCLUSTER_LAUNCHER"] = launcher
    args = list(pcluster_args) + (["--ip", ip] if ip else [])
    if args:
        env["PCLUSTER_ARGS"] = shlex.join(args)
    exe = _pcluster_exe()
    if exe:
        env["PCLUSTER_EXE"] = exe
    if network:
        # Open MPI's TCP traffic (and its daemons' out-of-band channel) on this network only.
        env["OMPI_MCA_btl_tcp_if_include"] = network
        env["OMPI_MCA_oob_tcp_if_include"] = network
    settings += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    pkg = _package_parent()
    if pkg:
        settings.append(f'export PYTHONPATH={shlex.quote(pkg)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    out = "\n".join(lines) + "\n"
    return out.replace(SETTINGS_MARK, "\n".join(settings), 1)


# --------------------------------------------------------------------------- jobs
class Job:
    """A pcluster job of SLURM's, known by its job id (submitted by `submit`, or any running one).

    state/reason/nodes ask SLURM each time; wait() and client() are bounded.
    """

    def __init__(self, job_id, connection_file=None, script=None, script_file=None):
        self.id = str(job_id).strip()
        if not re.fullmatch(r"\d+(_\d+)?", self.id):
            raise ValueError(f"{job_id!r} is not a SLURM job id (a number such as 1234)")
        self.connection_file = str(connection_file or connection_file_for_job(self.id))
        self.script = script
        self.script_file = script_file

    def __repr__(self):
        return f"<pcluster.slurm.Job {self.id}>"

    def __str__(self):
        return self.id

    # --- what SLURM says ---
    def record(self):
        """scontrol's fields for this job, or None once SLURM has forgotten it."""
        return job_record(self.id)

    @property
    def state(self):
        """RUNNING, PENDING, COMPLETED, CANCELLED, FAILED, ... ('UNKNOWN' once SLURM forgot it)."""
        rec = self.record()
        return rec.get("JobState", "UNKNOWN") if rec else "UNKNOWN"

    @property
    def reason(self):
        rec = self.record()
        return rec.get("Reason") if rec else None

    @property
    def nodes(self):
        """Host names of the job's nodes (empty while it is pending)."""
        rec = self.record()
        return expand_hostlist(rec.get("NodeList")) if rec else []

    @property
    def ntasks(self):
        rec = self.record()
        try:
            return int(rec.get("NumTasks")) if rec else None
        except (TypeError, ValueError):
            return None

    @property
    def output_file(self):
        rec = self.record()
        return _output_path(rec) if rec else None

    def output_tail(self, lines=20):
        path = self.output_file
        return _tail(path, lines)[1] if path else "    (SLURM no longer knows the job's output file)"

    # --- waiting and attaching ---
    def wait(self, timeout=300, progress=None):
        """Wait until the job runs and its connection file is there; returns the file's path.

        progress: None (quiet), True (a progress line on stderr) or callable(state, reason,
        elapsed). Raises JobNotRunning when the job ends or fails first (with its state and the
        tail of its output), JobCannotStart when SLURM says it cannot start as submitted, and
        JobWaitTimeout after timeout seconds; the job stays queued in the last two cases.
        """
        if progress is True:
            progress = ProgressLine(self.id)
        t0 = time.monotonic()
        deadline = t0 + float(timeout)
        interval, hopeless_since, rec = 0.2, None, None
        try:
            while True:
                rec = self.record()
                if rec is None:
                    raise JobNotRunning(self._unknown_message())
                state, reason = rec.get("JobState", "?"), rec.get("Reason")
                if state in STARTED and self._file_ready(rec):
                    return self.connection_file
                if state in ENDED:
                    # The bridge may have written the file just before a quick end: not ours to use.
                    raise JobNotRunning(self._ended_message(self._settled(rec)))
                now = time.monotonic()
                if progress:
                    progress(state, reason, now - t0)
                if state == "PENDING" and cannot_start(reason):
                    hopeless_since = hopeless_since or now
                    if now - hopeless_since >= CANNOT_START_GRACE:
                        raise JobCannotStart(
                            f"job {self.id} cannot start: SLURM says PENDING ({describe_reason(reason)}). It stays "
                            f"queued; cancel it with `pcluster cancel {self.id}` and submit it with other options "
                            f"(fewer nodes or tasks, a shorter --time, another partition: `sinfo` lists them)")
                else:
                    hopeless_since = None
                if now >= deadline:
                    raise JobWaitTimeout(self._timeout_message(rec, timeout))
                # SLURM is asked less and less often (up to every 2 s); the connection file, a
                # local stat, is watched every 50 ms so a ready job is seen at once.
                seen = _mtime(self.connection_file)
                wake = min(now + interval, deadline)
                while time.monotonic() < wake and _mtime(self.connection_file) == seen:
                    time.sleep(0.05)
                interval = min(interval * 1.5, 2.0)
        finally:
            if progress and hasattr(progress, "done"):
                progress.done()

    def client(self, timeout=300, progress=True, **kwargs):
        """Wait for the job (bounded by timeout, progress line on stderr), then connect: a Client."""
        from .client import Client

        t0 = time.monotonic()
        path = self.wait(timeout, progress=progress)
        left = max(10.0, timeout - (time.monotonic() - t0))
        return Client(path, timeout=left, **kwargs)

    def cancel(self, timeout=30):
        """scancel the job; waits (bounded) until SLURM no longer counts it as pending or running.
        Returns the state it ended in. Attached clients are told "the job ended (cancelled by SLURM)"."""
        cancel(self.id)
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record()
            state = rec.get("JobState", "UNKNOWN") if rec else "UNKNOWN"
            if state not in STARTED and state != "PENDING" or time.monotonic() >= deadline:
                return state
            time.sleep(0.2)

    # --- messages ---
    def _file_ready(self, rec):
        """The connection file is this job's: complete, and written from one of its nodes (a file
        left by an older job of the same id, after SLURM's ids were reset, is not)."""
        try:
            with open(self.connection_file) as f:
                info = json.load(f)
        except (OSError, ValueError):
            return False
        if info.get("job_id") not in (None, f"slurm-{self.id}"):
            return False
        host = info.get("controller_host") or info.get("host")
        nodes = expand_hostlist(rec.get("NodeList"))
        return not nodes or not host or host in nodes or host.split(".")[0] in nodes

    def _settled(self, rec, limit=5.0):
        """rec, or once a COMPLETING job has its final state (FAILED with its exit code, ...)
        within `limit` seconds, that record: COMPLETING says only that it is ending."""
        deadline = time.monotonic() + limit
        while rec is not None and rec.get("JobState") == "COMPLETING" and time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.record()
            if now is None:  # forgotten meanwhile: what it said last is all there is
                break
            rec = now
        return rec

    def _ended_message(self, rec):
        state = rec.get("JobState", "?")
        bits = [state]
        if rec.get("ExitCode") not in (None, "0:0"):
            bits.append(f"exit code {rec['ExitCode']}")
        if rec.get("Reason") not in (None, "None"):
            bits.append(f"reason {rec['Reason']}")
        meaning = STATE_MEANING.get(state, "")
        out = _output_path(rec)
        tail = _tail(out)[1] if out else "    (no output file)"
        hint = ""
        if rec.get("Reason") == "JobLaunchFailure" or "JobLaunchFailure" in rec.get("Reason", ""):
            hint = (" A launch failure often means the job's working directory (WorkDir="
                    f"{rec.get('WorkDir', '?')}) does not exist on its nodes: submit from a directory every node sees.")
        return (f"job {self.id} is over, there is no pcluster job to attach to: {', '.join(bits)}"
                f"{' (' + meaning + ')' if meaning else ''}.{hint} Its output ({out}), last lines:\n{tail}")

    def _unknown_message(self):
        acct = _sacct_state(self.id)
        if acct:
            return f"job {self.id} has ended: SLURM's accounting says {acct}; slurmctld no longer lists it"
        return (f"SLURM does not know job {self.id}: it ended a while ago (slurmctld forgets jobs after "
                f"MinJobAge) or never existed. `pcluster jobs` lists your running pcluster jobs")

    def _timeout_message(self, rec, timeout):
        state, reason = rec.get("JobState", "?"), rec.get("Reason")
        if state in STARTED:
            out = _output_path(rec)
            tail = _tail(out)[1] if out else "    (no output file)"
            return (f"job {self.id} has been running but its connection file {self.connection_file} did not appear "
                    f"within {timeout:g} s. Does the job write its connection files where this host looks "
                    f"(PCLUSTER_CONNECTION_DIR, a directory every node and this host see)? Its output ({out}), "
                    f"last lines:\n{tail}")
        return (f"job {self.id} is still {state} ({describe_reason(reason)}) after {timeout:g} s. It stays queued: "
                f"attach later with `pcluster attach {self.id}` (or pcluster.Client(job={self.id})), or "
                f"cancel it with `pcluster cancel {self.id}`")


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _output_path(rec):
    """The job's stdout file, with SLURM's %j/%x/%u/%% filled in when scontrol left them."""
    out = rec.get("StdOut")
    if not out or out == "(null)":
        return None
    subs = {"j": rec.get("JobId", ""), "x": rec.get("JobName", ""), "u": _user(), "%": "%",
            "A": rec.get("ArrayJobId", rec.get("JobId", "")), "N": (rec.get("BatchHost") or "")}
    return re.sub(r"%(\d*)([jxu%AN])", lambda m: subs.get(m.group(2), m.group(0)), out)


class ProgressLine:
    """'job 123: PENDING (Resources: ...) 0:12' on stderr: rewritten in place on a terminal, a
    new line only when the state or reason changes otherwise (logs stay short)."""

    def __init__(self, job_id, stream=None):
        self.job_id = job_id
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = None
        self.width = 0

    def __call__(self, state, reason, elapsed):
        what = state if state != "PENDING" else f"PENDING ({describe_reason(reason)})"
        if state in STARTED:
            what = f"{state}: waiting for pcluster's connection file"
        m, s = divmod(int(elapsed), 60)
        if self.tty:
            line = f"pcluster: job {self.job_id} {what} {m}:{s:02d}"
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        elif what != self.last:
            self.stream.write(f"pcluster: job {self.job_id} {what} ({m}:{s:02d})\n")
            self.stream.flush()
        self.last = what

    def done(self):
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


# --------------------------------------------------------------------------- module functions
def submit(nodes=None, ntasks=None, time=None, partition=None, account=None, qos=None, extra=(), *,
           job_name="pcluster", output=None, connection_dir=None, modules=(), setup=(), launcher="auto",
           pcluster_args=(), ip=None, network=None, template=None, env=None):
    """Submit a pcluster job with sbatch; returns its Job at once (job.client() waits for it).

    nodes, ntasks (the controller plus ntasks-1 engines), time, partition, account, qos become
    #SBATCH lines; `extra` are more sbatch options, passed on its command line as they are (they
    win over the script's lines). connection_dir: where the job writes slurm-<id>.json (default
    $PCLUSTER_CONNECTION_DIR or ~/.pcluster; every node and this host must see it). modules:
    `module load` in the job; setup: more shell lines. launcher: auto (Open MPI's mpirun
    --enable-recovery, else srun --mpi=pmix), srun or mpirun. ip: where
    the bridge listens (pcluster --ip); network: Open MPI's TCP network (e.g. "10.1.0.0/16" or
    "ib0"). env: the environment for sbatch (default: this process's, which the job inherits).
    Raises SubmitError with sbatch's message when it refuses the job.
    """
    extra = [str(x) for x in extra]
    cdir = Path(connection_dir).expanduser().absolute() if connection_dir else Path(_core.connection_dir())
    script = render_script(nodes, ntasks, time, partition, account, qos, job_name=job_name, output=output,
                           connection_dir=cdir, modules=modules, setup=setup, launcher=launcher,
                           pcluster_args=pcluster_args, ip=ip, network=network, template=template)
    try:
        cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise SlurmError(f"cannot create the connection directory {cdir}: {e.strerror}") from None
    # The script is kept next to the job's connection file (slurm-<id>.sbatch) for reference.
    fd_path = cdir / f".submit-{os.getpid()}-{int(_now() * 1000)}.sbatch"
    fd_path.write_text(script)
    # The environment the user loaded reaches the job, whatever the site's SBATCH_EXPORT says,
    # unless the user chose --export themselves.
    export = [] if any(a == "--export" or a.startswith("--export=") for a in extra) else ["--export=ALL"]
    argv = ["sbatch", "--parsable", *export, *extra, str(fd_path)]
    try:
        proc = _run(argv, env=env)
    except BaseException:
        fd_path.unlink(missing_ok=True)
        raise
    if proc.returncode != 0:
        fd_path.unlink(missing_ok=True)
        msg = proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}"
        raise SubmitError(f"sbatch refused the job: {msg}\n  (sbatch {shlex.join(argv[1:-1])} <script>; "
                          f"`pcluster submit --print-script ...` shows the script)")
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0].strip()
    script_file = cdir / f"slurm-{job_id}.sbatch"
    try:
        fd_path.rename(script_file)
    except OSError:
        script_file = fd_path
    return Job(job_id, connection_file=cdir / f"slurm-{job_id}.json", script=script, script_file=str(script_file))


def _now():
    return time.time()


def cancel(job_id):
    """scancel a job; SlurmError with scancel's message when it refuses."""
    proc = _run(["scancel", str(job_id)])
    if proc.returncode != 0:
        raise SlurmError(f"scancel {job_id}: {proc.stderr.strip() or f'exit status {proc.returncode}'}")
    # scancel is silent about an unknown or finished job with some versions: say it ourselves.
    if "Invalid job id" in proc.stderr:
        raise SlurmError(f"scancel {job_id}: {proc.stderr.strip()}")


def wait_connection_file(job_id, timeout=300, progress=None, connection_file=None):
    """The connection file of SLURM job `job_id` once the job runs and the file is there (bounded
    by timeout; errors as Job.wait)."""
    return Job(job_id, connection_file=connection_file).wait(timeout, progress=progress)


def jobs(all_jobs=False, connection_dir=None):
    """This user's pcluster jobs: a list of dicts id, name, state, reason, nodes, ntasks, engines
    (from the connection file once running), connection_file (None until it exists), time.

    A job counts as pcluster's when its name starts with "pcluster" or its connection file is
    there. all_jobs: also those that ended recently (SLURM still lists them for MinJobAge)."""
    user = _user()
    out = []
    for rec in job_records():
        if rec.get("UserId", "").split("(")[0] != user:
            continue
        state = rec.get("JobState", "?")
        if state in ENDED and not all_jobs:
            continue
        jid = rec.get("JobId")
        path = connection_file_for_job(jid, connection_dir)
        name = rec.get("JobName", "")
        engines, cf = None, None
        if path.exists():
            try:
                with open(path) as f:
                    engines = json.load(f).get("engines")
                cf = str(path)
            except (OSError, ValueError):
                pass
        if not (name.startswith("pcluster") or cf):
            continue
        try:
            ntasks = int(rec.get("NumTasks"))
        except (TypeError, ValueError):
            ntasks = None
        out.append({"id": jid, "name": name, "state": state, "reason": rec.get("Reason"),
                    "nodes": rec.get("NodeList") if rec.get("NodeList") not in (None, "(null)") else "",
                    "ntasks": ntasks, "engines": engines, "connection_file": cf,
                    "time": rec.get("RunTime", ""), "output": _output_path(rec)})
    return out
