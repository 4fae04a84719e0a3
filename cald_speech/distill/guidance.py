"""Guidance strategies of CALD: which teacher guides the student, and when.

=============  ==============================================================
mode           teacher and loss schedule
=============  ==============================================================
``unguided``   no teacher; task loss only (parameter transfer still applies)
``target``     the fine-tuned transformer, fixed, for the whole run
``trajectory`` a transformer fine-tuned alongside the student from the same
               pretrained model, one teacher update every ``teacher_update_every``
               student steps
``waypoint``   checkpoints of an earlier fine-tuning run: at student step s the
               teacher is the earliest waypoint whose step is > s x
               ``waypoint_pace`` (the last one once s has passed them all)
``hybrid``     ``target`` until ``switch_step``; then the layer loss is off and
               the logit KD stays on or off (``logit_kd_after_switch``)
=============  ==============================================================

Example
-------
>>> g = Guidance("hybrid", switch_step=100)
>>> g.layer_weight(99), g.layer_weight(100)
(1.0, 0.0)
>>> g.uses_teacher(100)
True
>>> Guidance("unguided").uses_teacher(0)
False
"""

import os
import re
from dataclasses import dataclass, field

from cald_speech.errors import ConfigError, DataError

MODES = ("unguided", "target", "trajectory", "waypoint", "hybrid")

_STEP_DIR = re.compile(r"^(?:step|waypoint)[-_]?(\d+)$")


def discover_waypoints(folder):
    """Lists the waypoint checkpoints saved in ``folder`` as sorted (step, path) pairs.

    A waypoint is a sub-folder named ``step-<N>`` (or ``step_<N>``, ``waypoint-<N>``)
    holding a saved model.

    Example
    -------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> for s in (200, 50, 1000):
    ...     os.makedirs(os.path.join(d, f"step-{s}"))
    >>> [s for s, _ in discover_waypoints(d)]
    [50, 200, 1000]
    """
    folder = str(folder)
    if not os.path.isdir(folder):
        raise DataError(
            folder, "waypoint folder not found",
            "run the teacher fine-tuning recipe with waypoints enabled first",
        )
    found = []
    for name in os.listdir(folder):
        m = _STEP_DIR.match(name)
        if m and os.path.isdir(os.path.join(folder, name)):
            found.append((int(m.group(1)), os.path.join(folder, name)))
    if not found:
        raise DataError(
            folder, "holds no waypoint checkpoints (sub-folders named step-<N>)",
            "point waypoint_dir at the folder the teacher recipe wrote its waypoints to",
        )
    found.sort()
    steps = [s for s, _ in found]
    dup = sorted({s for s in steps if steps.count(s) > 1})
    if dup:
        raise DataError(folder, f"several waypoints for step(s) {dup}", "keep one per step")
    return found


def check_waypoints(waypoints):
    """Validates explicit (step, path) pairs: non-empty, strictly increasing steps."""
    waypoints = [(int(s), str(p)) for s, p in waypoints]
    if not waypoints:
        raise ConfigError("waypoint guidance needs at least one waypoint")
    steps = [s for s, _ in waypoints]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(
            f"waypoint steps must be strictly increasing, got {steps}; list them in order"
        )
    return waypoints


@dataclass
class Guidance:
    """A guidance strategy: the schedule of teachers and loss weights.

    Arguments
    ---------
    mode : str
        One of ``unguided``, ``target``, ``trajectory``, ``waypoint``, ``hybrid``.
    switch_step : int, optional
        Hybrid: first step without the layer loss.
    logit_kd_after_switch : bool
        Hybrid: keep the logit KD on after the switch.
    teacher_update_every : int
        Trajectory: one teacher optimiser step every this many student steps.
    waypoints : list of (int, str), optional
        Waypoint: (step, model folder) pairs, strictly increasing steps.
    waypoint_pace : float
        Waypoint: teacher updates per student update (default 1, step for step). A
        student with fewer updates than the teacher's run follows its whole trajectory
        with ``teacher updates / student updates`` (see :func:`waypoint_pace_for`).
    """

    mode: str
    switch_step: int = None
    logit_kd_after_switch: bool = True
    teacher_update_every: int = 1
    waypoints: list = field(default_factory=list)
    waypoint_pace: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown guidance mode '{self.mode}'; choose one of {MODES}")
        if self.mode == "hybrid" and (self.switch_step is None or self.switch_step < 0):
            raise ConfigError("hybrid guidance needs switch_step >= 0")
        if self.mode == "trajectory" and int(self.teacher_update_every) < 1:
            raise ConfigError("teacher_update_every must be >= 1")
        if self.mode == "waypoint":
            self.waypoints = check_waypoints(self.waypoints)
            pace = self.waypoint_pace
            if isinstance(pace, bool) or not isinstance(pace, (int, float)) or not pace > 0:
                raise ConfigError(
                    f"waypoint_pace must be a number > 0 (teacher updates per student "
                    f"update), got {pace!r}"
                )

    def uses_teacher(self, step):
        """Whether a teacher forward pass is needed at ``step``."""
        if self.mode == "unguided":
            return False
        if self.mode == "hybrid" and step >= self.switch_step:
            return self.logit_kd_after_switch
        return True

    def layer_weight(self, step):
        """Multiplier (0 or 1) of the layer-alignment loss at ``step``."""
        if self.mode == "unguided":
            return 0.0
        if self.mode == "hybrid" and step >= self.switch_step:
            return 0.0
        return 1.0

    def logit_weight(self, step):
        """Multiplier (0 or 1) of the logit KD loss at ``step``."""
        if self.mode == "unguided":
            return 0.0
        if self.mode == "hybrid" and step >= self.switch_step:
            return 1.0 if self.logit_kd_after_switch else 0.0
        return 1.0

    def trains_teacher(self, step):
        """Trajectory: whether the teacher takes an optimiser step after ``step``."""
        return self.mode == "trajectory" and (step + 1) % int(self.teacher_update_every) == 0

    def waypoint_index(self, step):
        """Waypoint: index of the teacher for ``step`` (earliest whose step is greater
        than ``step`` x ``waypoint_pace``).

        Example
        -------
        >>> g = Guidance("waypoint", waypoints=[(10, "a"), (20, "b")])
        >>> [g.waypoint_index(s) for s in (0, 9, 10, 19, 20, 500)]
        [0, 0, 1, 1, 1, 1]
        >>> g = Guidance("waypoint", waypoints=[(10, "a"), (20, "b")], waypoint_pace=2)
        >>> [g.waypoint_index(s) for s in (0, 4, 5, 9, 10)]
        [0, 0, 1, 1, 1]
        """
        teacher_step = step * self.waypoint_pace
        for i, (s, _) in enumerate(self.waypoints):
            if s > teacher_step:
                return i
        return len(self.waypoints) - 1


def waypoint_pace_for(waypoints, student_updates):
    """The pace at which a run of ``student_updates`` ends on the last waypoint.

    Arguments
    ---------
    waypoints : list of (int, str)
        The teacher's (step, model folder) pairs.
    student_updates : int
        The student's planned updates.

    Returns
    -------
    float
        Last waypoint step / ``student_updates`` (1.0 when that is below 1: a student
        longer than the teacher's run follows it step for step, then keeps its end).

    Example
    -------
    >>> waypoint_pace_for([(0, "a"), (2500, "b"), (4850, "c")], 970)
    5.0
    """
    last = max(int(s) for s, _ in waypoints)
    return max(1.0, last / int(student_updates))
