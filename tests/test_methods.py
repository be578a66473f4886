"""One test class for every restoration method in the registry (the contract of
recon.restore.method): a batch gives each target's single run, an interrupted run resumes to the
uninterrupted result, a seed fixes the result, the history has one format, a result saves and
loads back, a damaged snapshot is named and the batch starts over, and a non-finite loss names
the target and the step."""
import numpy as np
import pytest
import torch

from recon.config import ProjectorConfig, RobustConfig
from recon.errors import ProjectionError
from recon.restore import METHODS, make_method, method_class
from recon.restore.degrade import Degradation, centre_mask
from recon.restore.method import HISTORY_COLUMNS, Restoration
from recon.restore.randomness import TorchRandom

# Short runs of each method; each crosses a phase boundary (W -> W+), so resumes cross one too.
SETTINGS = {
    "official": dict(num_steps=8, w_avg_samples=300, snapshot_every=3, latent_space="w->w+"),
    "robust": dict(method="robust", num_steps=8, robust=RobustConfig(phases=[3, 3, 2], min_loss_res=4),
                   snapshot_every=3),
}


# The tuning phase and posterior samples wrap any method: the same contract holds with them.
VARIANTS = dict(SETTINGS, **{
    "official+samples": dict(SETTINGS["official"], samples=2),
    "robust+tune": dict(SETTINGS["robust"], tune=dict(steps=4, learning_rate=3e-3, locality_weight=0.5, rank=2)),
})


def test_every_registered_method_is_tested():
    assert set(SETTINGS) == set(METHODS)


@pytest.fixture(scope="module")
def targets(G):
    g = torch.Generator().manual_seed(5)
    ws = G.mapping(torch.randn(3, G.z_dim, generator=g), None, truncation_psi=0.5)
    return G.synthesis(ws, noise_mode="const").clamp(-1, 1)


@pytest.fixture(scope="module")
def masked():
    return Degradation([{"type": "mask"}], 32, masks=centre_mask(32, 0.4).repeat(3, 1, 1, 1))


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("name", sorted(VARIANTS))
class TestMethodContract:
    def method(self, G, vgg, name, **over):
        cfg = ProjectorConfig(**dict(VARIANTS[name], **over))
        return make_method(G, vgg, cfg)

    def test_the_factory_makes_the_registered_class(self, G, vgg, name):
        m = self.method(G, vgg, name)
        base = name.split("+")[0]
        assert type(m) is method_class(base) and m.name == base
        cfg = m.cfg
        assert method_class(base).steps(method_class(base).budgeted(cfg, 11)) == 11
        # a budget of generator passes is shared by the samples and the tuning phase
        within = method_class(base).within_budget(cfg, 24)
        assert method_class(base).passes(within) <= 24 and method_class(base).passes(within) >= 20

    def test_batch_equals_single_runs(self, G, vgg, targets, masked, name):
        m = self.method(G, vgg, name, snapshot_every=0)
        t = masked.target(targets)
        rngs = [TorchRandom(7 + i) for i in range(3)]
        batch = m.restore(t, masked, names=list("abc"), rngs=rngs)
        for i in (0, 2):
            d = Degradation(masked.ops, 32, masks=masked.masks[i:i + 1], seed=masked.seed)
            (single,) = m.restore(t[i:i + 1], d, names=["abc"[i]], rngs=[TorchRandom(7 + i)])
            # batched convolutions round differently (~1e-6); a few steps keep it far below 1e-3
            torch.testing.assert_close(batch[i].image, single.image, atol=1e-3, rtol=1e-3)
            for k in single.latents:
                torch.testing.assert_close(batch[i].latents[k], single.latents[k], atol=1e-3, rtol=1e-3)

    def test_same_seed_same_result_other_seed_other_result(self, G, vgg, targets, masked, name):
        m = self.method(G, vgg, name, snapshot_every=0)
        d = Degradation(masked.ops, 32, masks=masked.masks[:1])
        t = d.target(targets[:1])
        a = m.restore(t, d, rngs=[TorchRandom(1)])[0]
        b = m.restore(t, d, rngs=[TorchRandom(1)])[0]
        c = m.restore(t, d, rngs=[TorchRandom(2)])[0]
        assert torch.equal(a.image, b.image) and a.history == b.history
        assert not torch.equal(a.image, c.image)

    def test_resume_gives_the_uninterrupted_result(self, G, vgg, targets, name, tmp_path):
        m = self.method(G, vgg, name)
        whole = m.restore(targets[:2], names=["x", "y"], record=True)
        snap = tmp_path / "snap.pt"
        total = method_class(m.cfg).total_steps(m.cfg)
        for stop_at in [s for s in (3, 6, 9) if s < total]:     # mid-phase, near the end, in the tuning

            def stop(step, images, stop_at=stop_at):
                assert images.shape == (2, 3, 32, 32)
                if step == stop_at:
                    raise Interrupt
            with pytest.raises(Interrupt):
                m.restore(targets[:2], names=["x", "y"], snapshot_path=snap, on_snapshot=stop, record=True)
            assert torch.load(snap, weights_only=True)["step"] == stop_at
            resumed = m.restore(targets[:2], names=["x", "y"], snapshot_path=snap, record=True)
            for a, b in zip(whole, resumed):
                assert torch.equal(a.image, b.image) and a.history == b.history
                assert all(torch.equal(a.latents[k], b.latents[k]) for k in a.latents)
                assert {p: len(v) for p, v in a.trajectory.items()} == {p: len(v) for p, v in b.trajectory.items()}
            snap.unlink()
        # a snapshot of other settings belongs to another run: refused, not overwritten
        with pytest.raises(Interrupt):
            m.restore(targets[:2], names=["x", "y"], snapshot_path=snap, on_snapshot=self._stop_at_first)
        other = self.method(G, vgg, name, seed=99)
        with pytest.raises(ProjectionError, match="other settings or targets; delete it"):
            other.restore(targets[:2], names=["x", "y"], snapshot_path=snap)

    @staticmethod
    def _stop_at_first(step, images):
        raise Interrupt

    def test_a_damaged_snapshot_is_named_and_the_batch_starts_over(self, G, vgg, targets, name, tmp_path):
        m = self.method(G, vgg, name)
        whole = m.restore(targets[:1])
        snap = tmp_path / "snap.pt"
        with pytest.raises(Interrupt):
            m.restore(targets[:1], snapshot_path=snap, on_snapshot=self._stop_at_first)
        snap.write_bytes(snap.read_bytes()[:100])
        with pytest.warns(RuntimeWarning, match=r"snap\.pt: unreadable snapshot .*the batch starts over"):
            again = m.restore(targets[:1], snapshot_path=snap)
        assert torch.equal(again[0].image, whole[0].image)

    def test_history_has_one_format(self, G, vgg, targets, name):
        (res,) = self.method(G, vgg, name, snapshot_every=0).restore(targets[:1])
        cfg = self.method(G, vgg, name).cfg
        steps = method_class(cfg).total_steps(cfg)
        assert [h["step"] for h in res.history] == list(range(steps))
        assert list(res.history[0])[:4] == list(HISTORY_COLUMNS)
        assert {h["phase"] for h in res.history} >= {"W", "W+"}
        assert all(np.isfinite(h["loss"]) and h["dist"] >= 0 for h in res.history)

    def test_save_and_load_round_trip(self, G, vgg, targets, name, tmp_path):
        (res,) = self.method(G, vgg, name, snapshot_every=0).restore(targets[:1], names=["f"])
        files = res.save(tmp_path / "f")
        assert sorted(files) == sorted(str(p.relative_to(tmp_path / "f")) for p in (tmp_path / "f").rglob("*")
                                       if p.is_file())
        cfg = self.method(G, vgg, name).cfg
        assert sorted(files) == sorted(method_class(cfg).result_files(cfg))   # what a receipt must vouch for
        back = Restoration.load(tmp_path / "f")
        assert back.history == res.history and set(back.latents) == set(res.latents)
        assert all(torch.equal(back.latents[k], res.latents[k]) for k in res.latents)
        assert (back.image - res.image.clamp(-1, 1)).abs().max() <= 1 / 127.5 + 1e-6
        assert set(back.phase_images) == set(res.phase_images)

    def test_a_non_finite_loss_names_the_target_and_step(self, G, vgg, targets, name, tmp_path):
        m = self.method(G, vgg, name)
        calls = {"n": 0}
        real = m.perceptual

        def exploding(*args):
            calls["n"] += 1
            out = real(*args)
            return out * float("inf") if calls["n"] > 8 else out
        m.perceptual = exploding
        with pytest.raises(ProjectionError, match=r"target face_a(, sample \d+)?: non-finite loss at step \d+"):
            m.restore(targets[:1], names=["face_a"], snapshot_path=tmp_path / "s.pt")
