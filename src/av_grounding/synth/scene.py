"""Scene content: a straight multi-lane road, an ego vehicle and tracked objects.

World frame = the ego rig at time 0 (FLU, ground at z = 0), as in real RDS-HQ clips where
frame 0's vehicle pose is the identity. Every object follows a smooth closed-form trajectory,
so its pose is defined at any time, not only on the 10 Hz label frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry.transforms import make_pose, rot_z

# Lane centres (world y, metres) and their direction of travel (+1 along +x).
PARKING_LANE = -6.5
LANES = {-3.5: 1, 0.0: 1, 3.5: -1, 7.0: -1}
ROAD_EDGES = (-7.75, 8.75)
SIDEWALK_WIDTH = 3.0
DASHED_LINES = (-5.25, -1.75, 5.25)
CENTRE_LINE = 1.75
LABEL_RANGE_M = 200.0  # tracks farther than this from the ego are not labelled


@dataclass(frozen=True)
class ObjectClass:
    raw_type: str  # as RDS-HQ names it
    lwh: tuple[float, float, float]
    colour: tuple[float, float, float]
    weight: float  # sampling weight among vehicles; 0 for non-vehicles
    is_vehicle: bool = True


VEHICLE_CLASSES = (
    ObjectClass("Car", (4.6, 1.9, 1.55), (0.75, 0.12, 0.12), 0.40),
    ObjectClass("Automobile", (4.3, 1.8, 1.5), (0.15, 0.30, 0.75), 0.12),
    ObjectClass("Truck", (7.5, 2.45, 3.0), (0.90, 0.90, 0.88), 0.12),
    ObjectClass("Heavy_truck", (9.5, 2.55, 3.6), (0.85, 0.55, 0.10), 0.06),
    ObjectClass("Bus", (12.0, 2.6, 3.2), (0.95, 0.80, 0.15), 0.10),
    ObjectClass("Trailer", (10.0, 2.5, 3.4), (0.55, 0.55, 0.60), 0.08),
    ObjectClass("Other_vehicle", (5.4, 2.1, 2.3), (0.20, 0.55, 0.30), 0.12),
)
OTHER_CLASSES = (
    ObjectClass("Pedestrian", (0.6, 0.6, 1.75), (0.80, 0.35, 0.65), 0.0, False),
    ObjectClass("Cyclist", (1.8, 0.6, 1.7), (0.10, 0.75, 0.80), 0.0, False),
)
CLASSES = {c.raw_type: c for c in VEHICLE_CLASSES + OTHER_CLASSES}


@dataclass(frozen=True)
class Track:
    """One object: x(t) = x0 + speed * t along +x, y(t) a lane with an optional smooth lane change."""

    track_id: str
    raw_type: str
    lwh: tuple[float, float, float]
    colour: tuple[float, float, float]
    x0: float
    y0: float
    speed: float  # signed, m/s along world x
    lane_change_dy: float = 0.0
    lane_change_start: float = 0.0
    lane_change_duration: float = 1.0

    def _lateral(self, t: float) -> tuple[float, float]:
        """Offset and its time derivative: a smoothstep lane change."""
        if not self.lane_change_dy:
            return 0.0, 0.0
        s = np.clip((t - self.lane_change_start) / self.lane_change_duration, 0.0, 1.0)
        ds = 0.0 if s in (0.0, 1.0) else 1.0 / self.lane_change_duration
        return self.lane_change_dy * (3 * s**2 - 2 * s**3), self.lane_change_dy * 6 * s * (1 - s) * ds

    def pose(self, t: float) -> np.ndarray:
        """4x4 object-to-world: centre at half height, heading along the velocity."""
        dy, vy = self._lateral(t)
        x, y = self.x0 + self.speed * t, self.y0 + dy
        heading = np.arctan2(vy, self.speed) if self.speed else 0.0
        return make_pose(rot_z(heading), np.array([x, y, self.lwh[2] / 2.0]))

    @property
    def is_moving(self) -> bool:
        return self.speed != 0.0


@dataclass(frozen=True)
class Scene:
    ego_speed: float
    tracks: tuple[Track, ...]

    def ego_pose(self, t: float) -> np.ndarray:
        """4x4 rig-to-world; identity at t = 0."""
        return make_pose(np.eye(3), np.array([self.ego_speed * t, 0.0, 0.0]))


def _jittered_size(rng: np.random.Generator, cls: ObjectClass) -> tuple[float, float, float]:
    scale = rng.uniform(0.92, 1.08, size=3)
    length, width, height = (float(round(v, 3)) for v in np.asarray(cls.lwh) * scale)
    return length, width, height


def _jittered_colour(rng: np.random.Generator, cls: ObjectClass) -> tuple[float, float, float]:
    red, green, blue = (float(v) for v in np.clip(np.asarray(cls.colour) + rng.uniform(-0.08, 0.08, 3), 0, 1))
    return red, green, blue


def _collide(a: Track, b: Track, times: np.ndarray, margin: float = 1.5) -> bool:
    for t in times:
        pa, pb = a.pose(t)[:3, 3], b.pose(t)[:3, 3]
        if (abs(pa[0] - pb[0]) < (a.lwh[0] + b.lwh[0]) / 2 + margin
                and abs(pa[1] - pb[1]) < (a.lwh[1] + b.lwh[1]) / 2 + 0.3):
            return True
    return False


def sample_scene(rng: np.random.Generator, num_vehicles: int, num_pedestrians: int,
                 duration_s: float) -> Scene:
    """Draw a scene. It always holds an occlusion case: a large vehicle ahead of the ego in its
    lane and a car right behind it, both at the ego's speed, so the car stays hidden."""
    ego_speed = float(rng.uniform(8.0, 12.0))
    lane_speed = {y: (ego_speed + rng.uniform(-2.5, 2.5) if d > 0 else -rng.uniform(8.0, 14.0))
                  for y, d in LANES.items()}
    lane_speed[0.0] = ego_speed
    times = np.linspace(0.0, duration_s, 7)
    tracks: list[Track] = []

    def add(track: Track) -> bool:
        if any(_collide(track, other, times) for other in tracks):
            return False
        tracks.append(track)
        return True

    blocker = CLASSES["Truck" if rng.random() < 0.5 else "Bus"]
    blocker_x = float(rng.uniform(14.0, 22.0))
    blocker_lwh = _jittered_size(rng, blocker)
    add(Track("0", blocker.raw_type, blocker_lwh, _jittered_colour(rng, blocker), blocker_x, 0.0, ego_speed))
    hidden = CLASSES["Car"]
    hidden_lwh = _jittered_size(rng, hidden)
    add(Track("1", hidden.raw_type, hidden_lwh, _jittered_colour(rng, hidden),
              blocker_x + blocker_lwh[0] / 2 + hidden_lwh[0] / 2 + 3.0, 0.0, ego_speed))

    weights = np.array([c.weight for c in VEHICLE_CLASSES])
    attempts = 0
    while len(tracks) < 2 + num_vehicles and attempts < 50 * (num_vehicles + 1):
        attempts += 1
        cls = VEHICLE_CLASSES[rng.choice(len(VEHICLE_CLASSES), p=weights / weights.sum())]
        lwh = _jittered_size(rng, cls)
        x0 = float(rng.uniform(-40.0, 60.0) if rng.random() < 0.6 else rng.uniform(-70.0, 190.0))
        if abs(x0) < 8.0:  # keep clear of the ego itself
            continue
        if rng.random() < 0.15:
            track = Track(str(len(tracks)), cls.raw_type, lwh, _jittered_colour(rng, cls), x0,
                          PARKING_LANE + rng.uniform(-0.2, 0.2), 0.0)
        else:
            lane = float(rng.choice(list(LANES)))
            change = 0.0
            if rng.random() < 0.2:
                neighbours = [y for y in LANES if abs(y - lane) == 3.5 and LANES[y] == LANES[lane]]
                change = (neighbours[0] - lane) if neighbours else 0.0
            track = Track(str(len(tracks)), cls.raw_type, lwh, _jittered_colour(rng, cls), x0, lane,
                          float(lane_speed[lane]), change, float(rng.uniform(0.0, duration_s / 2)),
                          float(rng.uniform(3.0, 5.0)))
        add(track)

    for _ in range(num_pedestrians):
        cls = OTHER_CLASSES[int(rng.random() < 0.3)]
        side = ROAD_EDGES[0] - SIDEWALK_WIDTH / 2 if rng.random() < 0.5 else ROAD_EDGES[1] + SIDEWALK_WIDTH / 2
        speed = float(rng.choice([-1, 1]) * (1.4 if cls.raw_type == "Pedestrian" else 4.5))
        add(Track(str(len(tracks)), cls.raw_type, _jittered_size(rng, cls), _jittered_colour(rng, cls),
                  float(rng.uniform(-20.0, 60.0)), side + rng.uniform(-0.8, 0.8), speed))
    return Scene(ego_speed, tuple(tracks))
