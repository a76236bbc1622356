"""The TWM agent: observation model, dynamics model and actor-critic with their updates (SPEC 5, 7)."""
from __future__ import annotations

import torch
from torch import nn

from twm_fast import cuda_graph
from twm_fast.config import Config
from twm_fast.cuda_graph import CapturedCall, make_capturable
from twm_fast.imagination.graphed import GraphedImagination
from twm_fast.imagination.rollout import ImaginationStart, Rollout, imagine
from twm_fast.models.actor_critic import ActorCritic
from twm_fast.models.dynamics import DynamicsModel
from twm_fast.models.nets import adam, optimizer_step
from twm_fast.models.obs_model import ObservationModel


class Agent(nn.Module):
    def __init__(self, config: Config, num_actions: int):
        super().__init__()
        self.config = config
        self.num_actions = num_actions
        self.obs_model = ObservationModel(config)
        self.dynamics = DynamicsModel(config, num_actions)
        self.actor_critic = ActorCritic(config, num_actions)
        c = config
        self.obs_optimizer = adam(self.obs_model.parameters(), c.obs_lr, c.obs_eps, c.obs_weight_decay)
        self.dyn_optimizer = adam(self.dynamics.parameters(), c.dyn_lr, c.dyn_eps, c.dyn_weight_decay)
        self._graphed_imagination: GraphedImagination | None = None  # built on the first GPU rollout
        # Copies of the dynamics model and the actor-critic in config.imagine_dtype when it is not
        # float32 (a tuple, so that they are not submodules: no checkpoint, no optimiser).
        self._imagination_copies: tuple[DynamicsModel, ActorCritic] | None = None
        self._graphed_world_model_update: CapturedCall | None = None  # config.world_model_cuda_graph

    @property
    def device(self) -> torch.device:
        return self.dynamics.u_bias.device

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"obs": self.obs_optimizer, "dyn": self.dyn_optimizer,
                "actor": self.actor_critic.actor_optimizer, "critic": self.actor_critic.critic_optimizer}

    def world_model_autocast(self):
        """Context for the world-model updates' forward passes: bf16 autocast when
        config.world_model_dtype asks for it (weights, optimisers and backward stay fp32). Without
        the cast cache, which a CUDA graph must not capture (PyTorch's CUDA-graph notes)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False,
                              enabled=self.config.world_model_dtype == "bfloat16")

    def discounts(self, terminated: torch.Tensor) -> torch.Tensor:
        """gamma_t = 0.99 * (1 - terminated_t)."""
        return self.config.discount * (~terminated).float()

    # ---- Acting (collection and evaluation, SPEC 7) ---------------------------------------------
    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """obs (N, 4, 64, 64) uint8 -> actions (N,): the actor on the mode of z, sampled."""
        self.obs_model.eval()
        z = self.obs_model.sample(self.obs_model.encode(obs), "argmax")[0]
        return self.actor_critic.act(z)

    # ---- World model (SPEC 5.2) -------------------------------------------------------------------
    def _dynamics_loss(self, z, actions, rewards, terminated, truncated, target_logits):
        """Run the dynamics model over [context, window] and build its loss.

        z (B, L+1, z_dim) detached; actions, rewards, terminated, truncated (B, L+1) for the context
        step and the window; target_logits (B, L, 32, 32) encoder logits of the steps after the
        window's steps. Returns the loss, metrics and the predicted probs of the window's z
        (B, L, 32, 32) (from the outputs at the context step .. the second to last step)."""
        dones = terminated | truncated
        h = self.dynamics(z, actions, rewards[:, :-1], dones[:, :-1])          # (B, L+1, dim)
        # The losses in fp32 (no-ops without autocast).
        preds = {k: v.float() for k, v in self.dynamics.predict(h).items()}
        predicted_probs = torch.softmax(preds["z_logits"][:, :-1], dim=-1).detach()
        targets = {k: v[:, 1:] for k, v in preds.items()}
        loss, metrics = self.dynamics.loss(
            targets, target_logits, (~dones[:, 1:]).float(), rewards[:, 1:], self.discounts(terminated[:, 1:]))
        return loss, metrics, predicted_probs

    def update_world_model(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """One world-model update on a batch of windows (SPEC 5.2): dynamics step, then observation step.

        batch: obs (B, L+2, 4, 64, 64) uint8 [context, window, next]; actions, rewards, terminated,
        truncated (B, L+1) [context, window]. Returns z (B, L+1, z_dim) (context + window, sampled)
        for imagination, and metrics. On a GPU with config.world_model_cuda_graph, replayed from a
        CUDA graph after the first calls."""
        if self.config.world_model_cuda_graph and cuda_graph.on_cuda(list(batch.values())):
            if self._graphed_world_model_update is None:
                for optimizer in (self.obs_optimizer, self.dyn_optimizer):
                    make_capturable(optimizer)
                self._graphed_world_model_update = CapturedCall(self._update_world_model)
            return self._graphed_world_model_update(batch)
        return self._update_world_model(batch)

    def _update_world_model(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        c = self.config
        obs = batch["obs"]
        batch_size, length = obs.shape[0], obs.shape[1] - 2
        om = self.obs_model
        with self.world_model_autocast():  # forward passes; the backward passes run outside it
            with torch.no_grad():
                context_z = om.sample(om.encode(obs[:, 0]).float(), "sample")[0]
                next_logits = om.encode(obs[:, -1]).float()
            self.train()
            window = obs[:, 1:-1].flatten(0, 1)
            logits = om.encode(window).float()                                  # (B*L, 32, 32)
            z, _, log_probs, entropy = om.sample(logits, "straight_through")
            recon = om.decode(z).float()
            obs_loss = om.decoder_loss(recon, window) + om.entropy_loss(entropy)

            z = z.detach().view(batch_size, length, -1)
            z_all = torch.cat([context_z[:, None], z], dim=1)                    # (B, L+1, z_dim)
            logits = logits.view(batch_size, length, *logits.shape[1:])
            target_logits = torch.cat([logits[:, 1:].detach(), next_logits[:, None]], dim=1)
            dyn_loss, metrics, predicted_probs = self._dynamics_loss(
                z_all, batch["actions"], batch["rewards"], batch["terminated"], batch["truncated"], target_logits)
            # predicted_probs are detached values: the same before or after the dynamics step.
            consistency = om.consistency_loss(log_probs, predicted_probs.flatten(0, 1))
        metrics["dyn/grad_norm"], metrics["dyn/skipped"] = optimizer_step(self.dyn_optimizer, dyn_loss,
                                                                          c.dyn_grad_clip)
        obs_loss = obs_loss + consistency
        metrics["obs/grad_norm"], metrics["obs/skipped"] = optimizer_step(self.obs_optimizer, obs_loss,
                                                                          c.obs_grad_clip)
        metrics.update({
            "obs/loss": obs_loss.detach(), "obs/consistency": consistency.detach(),
            "obs/entropy": entropy.detach().sum(-1).mean(),
            "obs/recon_mae": (recon.detach() - window.float() / 255).abs().mean(),
        })
        return z_all, metrics

    # ---- Imagination and actor-critic (SPEC 5.3, 5.4) -------------------------------------------
    def imagination_starts(self, z: torch.Tensor, batch: dict[str, torch.Tensor], num: int) -> ImaginationStart:
        """Every pair of consecutive z in the batch is a candidate start (B x L); choose `num`
        without replacement. z (B, L+1, z_dim) [context, window]."""
        dones = batch["terminated"][:, :-1] | batch["truncated"][:, :-1]
        pairs = torch.stack([z[:, :-1], z[:, 1:]], dim=2).flatten(0, 1)          # (B*L, 2, z_dim)
        pick = torch.randperm(pairs.shape[0], device=z.device)[:num]
        return ImaginationStart(pairs[pick], batch["actions"][:, :-1].flatten()[pick],
                                batch["rewards"][:, :-1].flatten()[pick], dones.flatten()[pick])

    @torch.no_grad()
    def restart_latents(self, obs: torch.Tensor) -> torch.Tensor:
        """Sampled z of random replay observations (N, 4, 64, 64), for restarting imagined rollouts."""
        self.obs_model.eval()
        return self.obs_model.sample(self.obs_model.encode(obs), "sample")[0]

    def imagination_models(self) -> tuple[DynamicsModel, ActorCritic]:
        """The dynamics model and actor-critic that imagination runs: the trained ones in float32,
        else their copies in config.imagine_dtype, refreshed from the trained weights on each call."""
        dtype = getattr(torch, self.config.imagine_dtype)
        if dtype == torch.float32:
            return self.dynamics, self.actor_critic
        copies = self._imagination_copies
        if copies is None or copies[0].u_bias.device != self.device:
            copies = (DynamicsModel(self.config, self.num_actions), ActorCritic(self.config, self.num_actions))
            copies = self._imagination_copies = tuple(m.to(self.device, dtype).eval() for m in copies)
            self._graphed_imagination = None  # a graph reads the weights it was captured with
        with torch.no_grad():
            for copy, trained in zip(copies, (self.dynamics, self.actor_critic)):
                # In place (a CUDA graph reads these addresses); one fused copy-and-cast per list on a GPU.
                torch._foreach_copy_(list(copy.parameters()), list(trained.parameters()))
        return copies

    def imagine(self, start: ImaginationStart, restart_z: torch.Tensor) -> Rollout:
        """The rollout of SPEC 5.3; on a GPU replayed from a CUDA graph (config.imagine_cuda_graph)."""
        c = self.config
        dynamics, actor_critic = self.imagination_models()
        if c.imagine_cuda_graph and cuda_graph.on_cuda([start.z, restart_z]):
            if self._graphed_imagination is None or self._graphed_imagination.modules[1] is not dynamics:
                self._graphed_imagination = GraphedImagination(
                    self.obs_model, dynamics, actor_critic, c.imagine_horizon, c.imagine_discount_threshold)
            return self._graphed_imagination(start, restart_z)
        return imagine(self.obs_model, dynamics, actor_critic, start, restart_z,
                       c.imagine_horizon, c.imagine_discount_threshold)

    def train_step(self, batch: dict[str, torch.Tensor], restart_obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step (SPEC 5): world model, imagination, critic, actor."""
        z, metrics = self.update_world_model(batch)
        start = self.imagination_starts(z, batch, self.config.imagine_batch_size)
        rollout = self.imagine(start, self.restart_latents(restart_obs))
        # Once per step, on the device: a non-finite imagined reward, discount or weight (a diverging
        # world model) skips the actor-critic's steps instead of training on it.
        finite = (torch.isfinite(rollout.rewards).all() & torch.isfinite(rollout.discounts).all()
                  & torch.isfinite(rollout.weights).all())
        self.actor_critic.train()
        metrics.update(self.actor_critic.update(rollout.z, rollout.actions, rollout.rewards, rollout.discounts,
                                                rollout.resets, rollout.weights, valid=finite))
        metrics["imagine/nonfinite"] = (~finite).float()
        metrics["imagine/reward"] = rollout.rewards.mean()
        metrics["imagine/discount"] = rollout.discounts.mean()
        return metrics

    # ---- Pretraining (SPEC 7) --------------------------------------------------------------------
    def pretrain_obs_model(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """obs (N, 4, 64, 64) uint8 single stacks: decoder NLL + entropy hinge (no consistency)."""
        om = self.obs_model.train()
        with self.world_model_autocast():
            z, _, _, entropy = om.sample(om.encode(obs).float(), "straight_through")
            loss = om.decoder_loss(om.decode(z).float(), obs) + om.entropy_loss(entropy)
        _, skipped = optimizer_step(self.obs_optimizer, loss, self.config.obs_grad_clip)
        return {"obs/loss": loss.detach(), "obs/entropy": entropy.detach().sum(-1).mean(), "obs/skipped": skipped}

    def pretrain_dynamics(self, z, actions, rewards, terminated, truncated, target_logits) -> dict:
        """One dynamics update on frozen encodings; arguments as `_dynamics_loss`."""
        self.dynamics.train()
        with self.world_model_autocast():
            loss, metrics, _ = self._dynamics_loss(z, actions, rewards, terminated, truncated, target_logits)
        metrics["dyn/grad_norm"], metrics["dyn/skipped"] = optimizer_step(self.dyn_optimizer, loss,
                                                                          self.config.dyn_grad_clip)
        return metrics

    def pretrain_actor_critic(self, z, rewards, terminated, truncated) -> dict:
        """z (N, H+1, z_dim) of real steps s..s+H; rewards, terminated, truncated (N, H).
        As published, discounts on real data are 0.99 * (1 - done), done = terminated or truncated."""
        dones = terminated | truncated
        self.actor_critic.train()
        return self.actor_critic.pretrain_update(z, rewards, self.discounts(dones), dones)
