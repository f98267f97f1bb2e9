import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from prefrl.segments import LabelSchedule, RecordSegments, SegmentBuffer, collect_random, select_queries


def record(env_id: str, T: int, n_envs: int = 2, cap: int = 1000, **kwargs) -> RecordSegments:
    venv = VecMonitor(DummyVecEnv([lambda: gym.make(env_id, **kwargs) for _ in range(n_envs)]))
    venv.seed(0)
    return RecordSegments(venv, length=T, buffer=SegmentBuffer(cap), env_id=env_id)


def test_cartpole_terminations_are_padded_with_the_absorbing_state():
    rec = record("CartPole-v1", T=50)
    collect_random(rec, min_segments=60, max_steps=100_000, rng=np.random.default_rng(0))
    segs = list(rec.buffer)
    assert len(segs) >= 60
    short = [s for s in segs if s.length < 50]
    assert short, "random CartPole episodes are shorter than 50 steps: padded segments expected"
    for s in short:
        assert s.terminated
        assert s.true_rewards[: s.length].sum() == s.length  # +1 per real step
        assert np.all(s.true_rewards[s.length :] == 0)  # the absorbing state pays nothing
        assert np.all(s.obs[s.length :] == 0)
    assert len({s.id for s in segs}) == len(segs)


def test_segments_never_cross_episode_boundaries():
    rec = record("CartPole-v1", T=8, n_envs=3)
    collect_random(rec, min_segments=200, max_steps=100_000, rng=np.random.default_rng(1))
    by_episode: dict[int, list] = {}
    for s in rec.buffer:
        by_episode.setdefault(s.episode, []).append(s)
    for segs in by_episode.values():
        segs.sort(key=lambda s: s.start)
        starts = [s.start for s in segs]
        assert starts == [8 * i for i in range(len(segs))]  # consecutive windows from the episode start
        assert all(not s.terminated for s in segs[:-1])  # only an episode's last window may end it
        # consecutive real observations within an episode: CartPole's state moves a little per step
        for s in segs:
            real = s.obs[: s.length]
            assert np.all(np.abs(np.diff(real[:, 0])) < 0.1)


def test_time_limit_truncation_is_dropped_not_padded():
    rec = record("Pendulum-v1", T=30, n_envs=2, max_episode_steps=70)
    collect_random(rec, min_segments=20, max_steps=10_000, rng=np.random.default_rng(0))
    segs = list(rec.buffer)
    assert all(s.length == 30 and not s.terminated for s in segs)
    assert {s.start for s in segs} == {0, 30}  # steps 60..69 were cut by the time limit and dropped


@pytest.mark.parametrize(
    ("space", "shape"),
    [
        (gym.spaces.Discrete(3), ()),
        (gym.spaces.MultiDiscrete([2, 3]), (2,)),
        (gym.spaces.Box(-1, 1, (2,)), (2,)),
    ],
)
def test_action_spaces_and_image_observations(space, shape):
    class Env(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (3, 16, 16), dtype=np.uint8)
        action_space = space

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t = 0
            return self.observation_space.sample(), {}

        def step(self, action):
            self.t += 1
            return self.observation_space.sample(), 1.0, self.t >= 7, False, {}

    rec = RecordSegments(DummyVecEnv([Env, Env]), length=5, buffer=SegmentBuffer(100), env_id="img")
    collect_random(rec, min_segments=10, max_steps=1000, rng=np.random.default_rng(0))
    s = rec.buffer[0]
    assert s.obs.shape == (5, 3, 16, 16) and s.obs.dtype == np.uint8
    assert s.actions.shape == (5, *shape)
    assert {x.length for x in rec.buffer} == {5, 2}  # 7-step episodes: one full window, one padded


def test_buffer_is_bounded_and_keeps_the_newest():
    rec = record("CartPole-v1", T=10, cap=25)
    collect_random(rec, min_segments=25, max_steps=5000, rng=np.random.default_rng(0))
    for _ in range(200):
        rec.step(np.array([0, 1]))
    assert len(rec.buffer) == 25
    ids = [s.id for s in rec.buffer]
    assert ids == sorted(ids) and ids[-1] == rec.buffer.next_id - 1


class FakeEnsemble:
    """Members agree on segments whose id is even and disagree on odd ones."""

    def returns_of(self, segments):
        ids = np.array([s.id for s in segments], dtype=float)
        odd = ids % 2 == 1
        out = np.tile(ids, (3, 1))
        out[:, odd] *= np.array([[-50.0], [0.0], [50.0]])
        return out


def test_disagreement_sampler_asks_where_members_disagree():
    rec = record("CartPole-v1", T=10)
    collect_random(rec, min_segments=200, max_steps=10_000, rng=np.random.default_rng(0))
    segs = list(rec.buffer)
    rng = np.random.default_rng(0)
    uniform, _ = select_queries(segs, n=30, sampler="uniform", rng=rng)
    chosen, metrics = select_queries(segs, n=30, sampler="disagreement", ensemble=FakeEnsemble(), rng=rng)
    frac_odd = np.mean([any(s.id % 2 for s in q.segments) for q in chosen])
    frac_odd_uniform = np.mean([any(s.id % 2 for s in q.segments) for q in uniform])
    assert frac_odd == 1.0 and frac_odd_uniform < 0.95
    assert metrics["labels/score_chosen"] > metrics["labels/score_pool"]
    assert all(len({s.id for s in q.segments}) == 2 for q in chosen)
    four, _ = select_queries(segs, n=5, k=4, sampler="entropy", ensemble=FakeEnsemble(), rng=rng)
    assert all(len({s.id for s in q.segments}) == 4 for q in four)


def test_query_ids_come_from_the_run_generator_so_a_seed_repeats_the_run():
    rec = record("CartPole-v1", T=10)
    collect_random(rec, min_segments=50, max_steps=10_000, rng=np.random.default_rng(0))
    segs = list(rec.buffer)
    for sampler, ens in (("uniform", None), ("disagreement", FakeEnsemble())):
        a, _ = select_queries(segs, n=8, sampler=sampler, ensemble=ens, rng=np.random.default_rng(3))
        b, _ = select_queries(segs, n=8, sampler=sampler, ensemble=ens, rng=np.random.default_rng(3))
        assert [q.id for q in a] == [q.id for q in b] and len({q.id for q in a}) == 8
        c, _ = select_queries(segs, n=8, sampler=sampler, ensemble=ens, rng=np.random.default_rng(4))
        assert not {q.id for q in a} & {q.id for q in c}


def test_label_schedule():
    s = LabelSchedule(total=200, initial_fraction=0.25, t0=1000, total_timesteps=10_000)
    assert s.due(0) == 50
    assert s.due(10_000) == 200 and s.due(50_000) == 200
    due = [s.due(t) for t in range(0, 10_001, 1000)]
    assert due == sorted(due)
    gains = np.diff(due)
    assert gains[0] > gains[-1] * 3  # rate ∝ t0/(T+t0): early labels come faster


def test_rare_episode_ends_still_reach_the_oracle():
    """Acrobot-like: a random policy ends an episode in ~1 % of segments; queries must include those ends."""
    from prefrl.data import Segment

    def seg(i: int, ended: bool) -> Segment:
        length = 10 if ended else 50
        return Segment(
            id=i,
            obs=np.zeros((50, 2), np.float32),
            actions=np.zeros(50, np.int64),
            true_rewards=np.r_[-np.ones(length), np.zeros(50 - length)].astype(np.float32),
            length=length,
            terminated=ended,
            env_id="x",
        )

    segs = [seg(i, ended=i % 100 == 0) for i in range(1000)]
    rng = np.random.default_rng(0)
    for sampler in ("uniform", "disagreement"):
        queries, _ = select_queries(segs, n=200, sampler=sampler, ensemble=FakeEnsemble(), rng=rng, ends_share=0.5)
        share = np.mean([any(s.terminated for s in q.segments) for q in queries])
        assert share > 0.3, sampler
        firsts = np.mean([q.segments[0].terminated for q in queries])
        assert 0.1 < firsts < 0.9  # the ended segment is not always shown first (left)
    plain, _ = select_queries(segs, n=200, sampler="uniform", rng=rng, ends_share=0.0)
    assert np.mean([any(s.terminated for s in q.segments) for q in plain]) < 0.1
