"""A scripted Crafter player that pursues one goal at a time: the built-in world's "contractor".

STEVE-1 learns from gameplay in which many things happen; the demonstrator produces such
gameplay on Crafter. It holds a goal (one of :data:`GOALS`), plays towards it with
breadth-first paths over what is on screen, and switches to a new goal right after the goal
is achieved or after ``goal_steps`` steps without success. Survival reflexes (fight a zombie
that comes close, drink when thirsty, eat when hungry, sleep when exhausted) interrupt the
goal, so that episodes last and look like play rather than a tech-tree script.

    env = CrafterEnv()
    demo = Demonstrator(env, DemonstratorConfig(), seed=0)
    obs, info = env.reset(seed=0)
    demo.reset()
    action = demo.act(info)          # an index into aimc.envs.crafter.ACTIONS
    demo.goal, demo.mode             # what it pursues now, and why ("goal" or a reflex)
    demo.equally_good                # the actions as good as that one (other shortest-path moves)

The demonstrator reads the game's internals (``env.world``, ``env.player``); it never
changes them. By default it acts only on what the player's frame shows (``sight="screen"``:
the 9x7 tiles around the player) and explores by walking straight ahead, so that every choice
it makes can be read off the frames a policy learns from. ``sight="map"`` lets it plan over
``search_radius`` tiles of the map instead: a stronger player whose moves towards unseen water
or cows no policy can imitate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from aimc.envs.crafter import ACTION_INDEX, ACTIONS, CrafterEnv
from aimc.errors import ConfigError

# The goals the demonstrator can pursue, named by the Crafter achievement that completes them.
GOALS: tuple[str, ...] = (
    "collect_wood",
    "collect_sapling",
    "place_plant",
    "collect_drink",
    "eat_cow",
    "place_table",
    "make_wood_pickaxe",
    "collect_stone",
    "place_stone",
    "defeat_zombie",
)

_DIRS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
_WALKABLE = ("grass", "sand", "path")  # where the player may step (lava is deliberately left out)


@dataclass
class DemonstratorConfig:
    """How the scripted player behaves.

    goals: the goals it switches between (names from ``GOALS``).
    goal_weights: relative chance of picking each goal (same order as ``goals``; empty =
        uniform). Rare, slow goals get more weight so that they stay visible in the data.
    goal_steps: give up on a goal after this many steps without achieving it.
    sight: "screen" = it sees and plans over the tiles on screen only (what a policy sees);
        "map" = over ``search_radius`` tiles of the map around it.
    search_radius: how far (in tiles) it plans paths with ``sight="map"``.
    turn_chance: with ``sight="screen"``, chance per step of exploring in a new direction
        (it walks straight ahead otherwise, and turns when blocked).
    noise: chance of a uniformly random action at any step (action diversity for cloning).
    tie_break: which of several shortest paths it walks. "order" = the first move tried in a
        fixed order (left, right, up, down: sideways first, as the recorded demonstrations);
        "facing" = the way the player faces first, so that it keeps going straight when that is
        as short (the frame shows the facing, and a policy's memory the moves so far).
    reflexes: fight close zombies, make a sword at a table, drink/eat/sleep when the
        stats run low.
    thirst_at / hunger_at / sleep_at: the drink / food / energy levels that trigger a reflex.
    """

    goals: tuple[str, ...] = GOALS
    goal_weights: tuple[float, ...] = ()
    goal_steps: int = 150
    sight: str = "screen"
    search_radius: int = 12
    turn_chance: float = 0.05
    noise: float = 0.03
    tie_break: str = "order"
    reflexes: bool = True
    thirst_at: int = 3
    hunger_at: int = 3
    sleep_at: int = 1

    def __post_init__(self) -> None:
        bad = [g for g in self.goals if g not in GOALS]
        if bad or not self.goals:
            raise ConfigError(f"DemonstratorConfig.goals must be a non-empty subset of {list(GOALS)}, got {list(self.goals)}")
        if self.goal_weights and len(self.goal_weights) != len(self.goals):
            raise ConfigError(f"DemonstratorConfig.goal_weights has {len(self.goal_weights)} entries for {len(self.goals)} goals")
        if any(w < 0 for w in self.goal_weights) or (self.goal_weights and sum(self.goal_weights) <= 0):
            raise ConfigError("DemonstratorConfig.goal_weights must be non-negative with a positive sum")
        if self.goal_steps < 1:
            raise ConfigError(f"DemonstratorConfig.goal_steps must be positive, got {self.goal_steps}")
        if self.sight not in ("screen", "map"):
            raise ConfigError(f"DemonstratorConfig.sight must be 'screen' or 'map', got {self.sight!r}")
        if not 0.0 <= self.turn_chance <= 1.0:
            raise ConfigError(f"DemonstratorConfig.turn_chance must be in [0, 1], got {self.turn_chance}")
        if self.search_radius < 2:
            raise ConfigError(f"DemonstratorConfig.search_radius must be at least 2, got {self.search_radius}")
        if not 0.0 <= self.noise <= 1.0:
            raise ConfigError(f"DemonstratorConfig.noise must be in [0, 1], got {self.noise}")
        if self.tie_break not in ("order", "facing"):
            raise ConfigError(f"DemonstratorConfig.tie_break must be 'order' or 'facing', got {self.tie_break!r}")


@dataclass
class _Plan:
    """Breadth-first search over the free tiles of a window around the player."""

    x0: int
    y0: int
    order: list[tuple[int, int]] = field(default_factory=list)  # world coords, nearest first
    first: dict[tuple[int, int], str] = field(default_factory=dict)  # first move towards a tile
    firsts: dict[tuple[int, int], set[str]] = field(default_factory=dict)  # every first move of a shortest path


class Demonstrator:
    """Plays Crafter towards a goal that switches over time; see the module docstring."""

    def __init__(self, env: CrafterEnv, config: DemonstratorConfig | None = None, seed: int | None = None) -> None:
        import crafter.constants as cc

        self.env = env
        self.config = config or DemonstratorConfig()
        self.rng = np.random.default_rng(seed)
        # the tiles on screen: Crafter's local view is view x (view - item rows), centred on the player
        view = int(env.config.view)
        self._half = (view // 2, (view - int(np.ceil(len(cc.items) / view))) // 2)
        self._place_needs = {k: dict(v["uses"]) for k, v in cc.place.items()}
        self._place_where = {k: tuple(v["where"]) for k, v in cc.place.items()}
        self._make_needs = {k: dict(v["uses"]) for k, v in cc.make.items()}
        w = np.asarray(self.config.goal_weights or [1.0] * len(self.config.goals), dtype=np.float64)
        self._weights = w / w.sum()
        self.goal: str = self.config.goals[0]
        self.fixed_goal: str | None = None
        self.mode: str = "goal"
        self._goal_age = 0
        self._waypoint: tuple[int, int] | None = None
        self._waypoint_age = 0
        self._drinking = False
        self._eating = False
        self.equally_good: frozenset[int] = frozenset()
        self._ties: set[str] | None = None

    # -- goal switching -----------------------------------------------------------------
    def reset(self, goal: str | None = None) -> None:
        """Start an episode; ``goal`` pins the goal for the whole episode (tests, experts)."""
        if goal is not None and goal not in GOALS:
            raise ValueError(f"unknown goal {goal!r}; goals are {list(GOALS)}")
        self.fixed_goal = goal
        self._waypoint = None
        self._drinking = self._eating = False
        self._pick_goal()

    def _pick_goal(self) -> None:
        self._goal_age = 0
        if self.fixed_goal is not None:
            self.goal = self.fixed_goal
            return
        w = self._weights.copy()
        if "defeat_zombie" in self.config.goals and self._nearest_object("Zombie", 8) is None:
            w[self.config.goals.index("defeat_zombie")] = 0.0  # nothing to fight: pick another
        if len(self.config.goals) > 1 and self.goal in self.config.goals:
            w[self.config.goals.index(self.goal)] *= 0.2  # rarely the same goal twice in a row
        if w.sum() <= 0:
            w = self._weights.copy()
        self.goal = str(self.config.goals[int(self.rng.choice(len(w), p=w / w.sum()))])

    def observe(self, info: dict) -> None:
        """Update the goal after a step (``info`` from ``env.step``)."""
        self._goal_age += 1
        if self.goal in info.get("unlocked", ()) or self._goal_age >= self.config.goal_steps:
            self._pick_goal()

    # -- acting ---------------------------------------------------------------------------
    def act(self, info: dict | None = None) -> int:
        """The next action (an index into ``ACTIONS``) for the current game state.

        Afterwards :attr:`equally_good` holds the actions that serve its purpose just as well
        (always including the one returned): the first moves of every shortest path to the tile
        it walks to, any free way but back when it explores by walking straight on (with
        ``sight="screen"``), and that action alone otherwise.
        """
        self._ties = None
        if self.config.noise > 0 and self.rng.random() < self.config.noise:
            self.mode = "noise"
            return self._safe(str(ACTIONS[int(self.rng.integers(0, len(ACTIONS)))]))
        plan = self._plan()
        if self.config.reflexes:
            a = self._reflex(plan)
            if a is not None:
                return self._safe(a)
        self.mode = "goal"
        return self._safe(self._pursue(self.goal, plan))

    def _safe(self, action: str) -> int:
        """Never step into lava (the player may walk on it, and dies)."""
        if self._into_lava(action):
            action = "noop"
        ties = self._ties if self._ties and action in self._ties else {action}
        self.equally_good = frozenset(ACTION_INDEX[a] for a in ties if a == action or not self._into_lava(a))
        return ACTION_INDEX[action]

    def _into_lava(self, action: str) -> bool:
        if action not in _DIRS:
            return False
        mat, _ = self.env.world[np.asarray(self.env.player.pos) + np.asarray(_DIRS[action])]
        return mat == "lava"

    def _path(self, plan: _Plan, cell: tuple[int, int]) -> str:
        """The first move towards ``cell``; the other first moves of shortest paths tie with it."""
        self._ties = set(plan.firsts[cell])
        return plan.first[cell]

    def _reflex(self, plan: _Plan) -> str | None:
        inv = self.env.player.inventory
        c = self.config
        zombie = self._nearest_object("Zombie", 3)
        if zombie is not None:
            self.mode = "fight"
            return self._interact_object(zombie, plan, "do")
        if self.env.player.sleeping:
            self.mode = "sleep"
            return "sleep"
        if inv["wood_sword"] < 1 and self._has(self._make_needs["wood_sword"]) and "table" in self.env.world.nearby(self.env.player.pos, 1)[0]:
            self.mode = "arm"  # a sword doubles the damage dealt to zombies at night
            return "make_wood_sword"
        # hysteresis: once started, keep drinking/eating until nearly full
        self._drinking = inv["drink"] <= c.thirst_at or (self._drinking and inv["drink"] < 8)
        self._eating = inv["food"] <= c.hunger_at or (self._eating and inv["food"] < 6)
        if self._drinking:
            a = self._face_material(("water",), plan, "do")
            if a is not None:
                self.mode = "drink"
                return a
        if self._eating:
            cow = self._nearest_reachable_object("Cow", plan)
            if cow is not None:
                self.mode = "eat"
                return self._interact_object(cow, plan, "do")
        if inv["energy"] <= c.sleep_at and self._nearest_object("Zombie", 8) is None:
            self.mode = "sleep"
            return "sleep"
        return None

    def _pursue(self, goal: str, plan: _Plan) -> str:
        inv = self.env.player.inventory
        if goal == "collect_wood":
            return self._face_material(("tree",), plan, "do") or self._explore(plan)
        if goal == "collect_sapling":
            return self._face_free(("grass",), "do") or self._explore(plan)
        if goal == "collect_drink":
            return self._face_material(("water",), plan, "do") or self._explore(plan)
        if goal == "eat_cow":
            cow = self._nearest_reachable_object("Cow", plan)
            return self._interact_object(cow, plan, "do") if cow is not None else self._explore(plan)
        if goal == "defeat_zombie":
            z = self._nearest_reachable_object("Zombie", plan)
            return self._interact_object(z, plan, "do") if z is not None else self._explore(plan)
        if goal == "place_plant":
            if inv["sapling"] < 1:
                return self._pursue("collect_sapling", plan)
            return self._face_free(self._place_where["plant"], "place_plant") or self._explore(plan)
        if goal == "place_table":
            if not self._has(self._place_needs["table"]):
                return self._pursue("collect_wood", plan)
            return self._face_free(self._place_where["table"], "place_table") or self._explore(plan)
        if goal == "make_wood_pickaxe":
            return self._make("wood_pickaxe", plan)
        if goal == "collect_stone":
            if inv["wood_pickaxe"] < 1:
                return self._make("wood_pickaxe", plan)
            return self._face_material(("stone",), plan, "do") or self._explore(plan)
        if goal == "place_stone":
            if inv["stone"] < 1:
                return self._pursue("collect_stone", plan)
            return self._face_free(self._place_where["stone"], "place_stone") or self._explore(plan)
        raise ValueError(f"unknown goal {goal!r}")

    def _make(self, item: str, plan: _Plan) -> str:
        """Gather what ``item`` needs, stand by a table, make it."""
        needs = self._make_needs[item]
        if not self._has(needs):
            return self._pursue("collect_wood", plan)
        near, _ = self.env.world.nearby(self.env.player.pos, 1)
        if "table" in near:
            return f"make_{item}"
        # walk to a visible table when there is one; else build one next to us
        a = self._face_material(("table",), plan, "noop", max_dist=8)
        if a is not None:
            return a
        table_and_item = {k: self._place_needs["table"].get(k, 0) + needs.get(k, 0) for k in set(needs) | set(self._place_needs["table"])}
        if not self._has(table_and_item):
            return self._pursue("collect_wood", plan)
        return self._face_free(self._place_where["table"], "place_table") or self._explore(plan)

    def _has(self, needs: dict[str, int]) -> bool:
        inv = self.env.player.inventory
        return all(inv[k] >= v for k, v in needs.items())

    # -- movement primitives ---------------------------------------------------------------
    def _reach(self) -> tuple[int, int]:
        """How far it sees and plans, in tiles left/right and up/down of the player."""
        if self.config.sight == "screen":
            return self._half
        return self.config.search_radius, self.config.search_radius

    def _sees(self, pos) -> bool:
        px, py = (int(v) for v in self.env.player.pos)
        rx, ry = self._reach()
        return abs(int(pos[0]) - px) <= rx and abs(int(pos[1]) - py) <= ry

    def _plan(self) -> _Plan:
        world, player = self.env.world, self.env.player
        rx, ry = self._reach()
        px, py = int(player.pos[0]), int(player.pos[1])
        ax, ay = world.area
        x0, x1, y0, y1 = max(0, px - rx), min(ax, px + rx + 1), max(0, py - ry), min(ay, py + ry + 1)
        mats = world._mat_map[x0:x1, y0:y1]
        walk_ids = [world._mat_ids[m] for m in _WALKABLE if m in world._mat_ids]
        free = np.isin(mats, walk_ids) & (world._obj_map[x0:x1, y0:y1] == 0)
        plan = _Plan(x0, y0)
        start = (px, py)
        plan.order.append(start)
        depth = {start: 0}  # the tiles reached so far, by path length
        queue = deque([start])
        dirs = list(_DIRS.items())
        if self.config.tie_break == "facing":
            # breadth-first search hands every tile the first move of the branch that reached it
            # first: trying the facing direction first makes "straight on" win every tie
            facing = tuple(int(v) for v in player.facing)
            dirs.sort(key=lambda item: item[1] != facing)
        while queue:
            cx, cy = queue.popleft()
            for name, (dx, dy) in dirs:
                n = (cx + dx, cy + dy)
                via = {name} if (cx, cy) == start else plan.firsts[(cx, cy)]
                if n in depth:
                    if depth[n] == depth[(cx, cy)] + 1:
                        plan.firsts[n] |= via  # another shortest path: its first move ties
                    continue
                if not (x0 <= n[0] < x1 and y0 <= n[1] < y1) or not free[n[0] - x0, n[1] - y0]:
                    continue
                depth[n] = depth[(cx, cy)] + 1
                plan.first[n] = name if (cx, cy) == start else plan.first[(cx, cy)]
                plan.firsts[n] = set(via)
                plan.order.append(n)
                queue.append(n)
        return plan

    def _face_material(self, materials: tuple[str, ...], plan: _Plan, action: str, max_dist: int | None = None) -> str | None:
        """Walk next to the nearest tile of ``materials`` and, facing it, do ``action``."""
        world = self.env.world
        px, py = (int(v) for v in self.env.player.pos)
        for cell in plan.order:
            if max_dist is not None and abs(cell[0] - px) + abs(cell[1] - py) > max_dist:
                continue
            for name, (dx, dy) in _DIRS.items():
                tile = (cell[0] + dx, cell[1] + dy)
                mat, obj = world[tile]
                if mat in materials and obj is None and self._sees(tile):
                    if cell == (px, py):
                        return action if tuple(self.env.player.facing) == (dx, dy) else name
                    return self._path(plan, cell)
        return None

    def _face_free(self, materials: tuple[str, ...], action: str) -> str | None:
        """Face an object-free tile of ``materials`` (grass to plant on, ...) and ``action``.

        Moving towards a walkable tile steps onto it, so the tile faced after a move is the
        one behind it; choose a move whose resulting facing tile fits.
        """
        world, player = self.env.world, self.env.player
        pos = np.asarray(player.pos)
        facing = pos + np.asarray(player.facing)
        mat, obj = world[facing]
        if mat in materials and obj is None:
            return action
        names = list(_DIRS)
        self.rng.shuffle(names)
        for name in names:
            d = np.asarray(_DIRS[name])
            mat1, obj1 = world[pos + d]
            if mat1 == "lava":
                continue
            steps = mat1 in _WALKABLE and obj1 is None
            target = pos + 2 * d if steps else pos + d
            mat2, obj2 = world[target]
            if mat2 in materials and obj2 is None:
                return name
        return None

    def _nearest_object(self, kind: str, max_dist: int):
        player = self.env.player
        best, best_d = None, max_dist + 1
        _, objs = self.env.world.nearby(player.pos, max_dist)
        # Crafter returns a set (ordered by memory address): ties go to the lowest position, so that
        # the same world and path give the same choice in every process
        for obj in sorted(objs, key=lambda o: (int(o.pos[0]), int(o.pos[1]))):
            if type(obj).__name__ == kind and not obj.removed and self._sees(obj.pos):
                d = int(np.abs(obj.pos - player.pos).sum())
                if d < best_d:
                    best, best_d = obj, d
        return best

    def _nearest_reachable_object(self, kind: str, plan: _Plan):
        obj = self._nearest_object(kind, self.config.search_radius)
        return obj

    def _interact_object(self, obj, plan: _Plan, action: str) -> str:
        """Walk next to ``obj`` (a creature), face it and ``action`` (hit it)."""
        player = self.env.player
        ox, oy = int(obj.pos[0]), int(obj.pos[1])
        px, py = int(player.pos[0]), int(player.pos[1])
        if abs(ox - px) + abs(oy - py) == 1:
            d = (ox - px, oy - py)
            if tuple(player.facing) == d:
                return action
            return next(n for n, v in _DIRS.items() if v == d)
        targets = {(ox + dx, oy + dy) for dx, dy in _DIRS.values()}
        for cell in plan.order[1:]:
            if cell in targets:
                return self._path(plan, cell)
        return self._step_towards((ox, oy), plan)

    def _step_towards(self, target: tuple[int, int], plan: _Plan) -> str:
        """The first move of a path to the reachable tile closest to ``target``."""
        best = min(plan.order, key=lambda c: abs(c[0] - target[0]) + abs(c[1] - target[1]))
        if best == plan.order[0]:
            return self._random_move()
        return self._path(plan, best)

    def _explore(self, plan: _Plan) -> str:
        """Look for new things: walk straight ahead (screen) or to a far reachable tile (map)."""
        if self.config.sight == "screen":
            return self._walk_ahead()
        px, py = (int(v) for v in self.env.player.pos)
        self._waypoint_age += 1
        if self._waypoint is None or self._waypoint == (px, py) or self._waypoint_age > 30 or self._waypoint not in plan.first:
            far = [c for c in plan.order if abs(c[0] - px) + abs(c[1] - py) >= self.config.search_radius // 2]
            pool = far or plan.order[1:]
            if not pool:
                return self._random_move()
            self._waypoint = pool[int(self.rng.integers(0, len(pool)))]
            self._waypoint_age = 0
        return self._path(plan, self._waypoint)

    def _walk_ahead(self) -> str:
        """Keep walking the way the player faces (the frame shows it); turn when blocked.

        A turn goes to a random free direction, other than back, when there is one.
        """
        player = self.env.player
        facing = tuple(int(v) for v in player.facing)
        ahead = next((n for n, v in _DIRS.items() if v == facing), None)

        def free(name: str) -> bool:
            mat, obj = self.env.world[np.asarray(player.pos) + np.asarray(_DIRS[name])]
            return mat in _WALKABLE and obj is None

        back = next((n for n, v in _DIRS.items() if v == (-facing[0], -facing[1])), None)
        # nothing in sight: any free way but back explores as well as straight on
        self._ties = {n for n in _DIRS if n != back and free(n)}
        if ahead is not None and free(ahead) and self.rng.random() >= self.config.turn_chance:
            return ahead
        options = [n for n in _DIRS if n not in (ahead, back) and free(n)]
        if not options:
            options = [n for n in _DIRS if n != ahead and free(n)] or [n for n in _DIRS if n != ahead]
        return str(options[int(self.rng.integers(0, len(options)))])

    def _random_move(self) -> str:
        return str(self.rng.choice(list(_DIRS)))
