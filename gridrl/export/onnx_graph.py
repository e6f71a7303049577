"""A trained policy as ONNX graphs an inverter or an edge controller runs: one graph shared by
every agent, the agent's index an input.

The deployed policy of a run (:func:`gridrl.marl.run.deployed`: the actor, its observation
normaliser and the safety envelope with the hand-over to IEEE 1547-B) splits where the
communication happens, exactly as :class:`~gridrl.marl.nets.NeighbourhoodNet` computes it:

- ``message.onnx``: ``obs [B, D]`` (raw measurements), ``agent [B]`` (int64 index) →
  ``message [B, H]``: what the agent sends its neighbours this step;
- ``action.onnx``: ``obs [B, D]``, ``agent [B]``, ``pooled [B, κ·H]`` (per hop, the mean of the
  messages that arrived), ``heard [B, κ]`` (the share of each hop's agents heard) →
  ``action [B]`` (share of the available reactive power ``sqrt(s_max² − p²)``, after the
  envelope) and ``q_mvar [B]`` (the agent's reactive power set-point);
- ``network.onnx``: ``obs [B, N, D]`` → ``actions [B, N]``: the whole feeder at once with every
  message delivered (for simulation, ``gridrl score --controller network.onnx``).

**Why one shared graph.** The actor's weights are shared by all agents (``training = "shared"``,
the default) and what sets agents apart is a learned embedding, which the agent's index selects;
one file serves every inverter of a feeder (configured with its index) and is N times smaller
than N copies. Runs trained with ``training = "decentralized"`` (own weights per agent) export to
the same interface; their graph selects the agent's weights by the same index.

Normalisation is folded into the graphs (they take raw measurements in the units of the
observation names) and listed in the description (:mod:`gridrl.export.protocol`). The envelope
runs in float64, as :class:`~gridrl.env.envelope.SafetyEnvelope` does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gridrl.env.envelope import handover, rating_outside, shield
from gridrl.marl.nets import EnsembleLinear

__all__ = ["ActionGraph", "DeployedAgents", "MessageGraph", "NetworkGraph", "OPSET", "export_graphs", "numpy_pool", "sizes"]

OPSET = 17


class _Affine(nn.Module):
    """One linear layer of the actor applied to one agent's row: weights shared (``[in, out]``)
    or one set per agent (``[N, in, out]``, selected by the agent's index)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.per_agent = isinstance(layer, EnsembleLinear)
        if self.per_agent:
            weight = layer.weight.detach()
            bias = None if layer.bias is None else layer.bias.detach()[:, 0, :]
        else:
            weight = layer.weight.detach().T
            bias = None if layer.bias is None else layer.bias.detach()
        self.register_buffer("weight", weight.contiguous().clone())
        self.register_buffer("bias", None if bias is None else bias.contiguous().clone())

    def forward(self, x: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        if self.per_agent:
            y = torch.matmul(x[:, None, :], self.weight[agent])[:, 0]
            return y if self.bias is None else y + self.bias[agent]
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class _Mlp(nn.Module):
    """An actor MLP (linear layers with ReLU between) over :class:`_Affine` layers."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.layers = nn.ModuleList(_Affine(m) for m in seq if not isinstance(m, nn.ReLU))

    def forward(self, x: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            x = layer(x, agent)
            if k < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class _Parts(nn.Module):
    """The tables of a deployed policy: normaliser, per-agent terms, layers, envelope."""

    def __init__(self, deployed):
        super().__init__()
        policy = deployed.inner
        net = policy.actor.net
        norm = policy.obs_norm
        n, d = len(policy.agents), len(policy.obs_names)
        with torch.no_grad():
            mean = norm.mean.to(torch.float32)
            std = torch.sqrt(norm.var + norm.eps).to(torch.float32)
            mean = torch.where(norm.keep, torch.zeros_like(mean), mean).expand(n, d)
            std = torch.where(norm.keep, torch.ones_like(std), std).expand(n, d)
            valid = torch.ones(n, d) if norm.valid is None else norm.valid.to(torch.float32)
            self.register_buffer("norm_mean", mean.contiguous().clone())
            self.register_buffer("norm_std", std.contiguous().clone())
            self.register_buffer("norm_valid", valid.contiguous().clone())
            self.clip = float(norm.clip)
            # the embedding's share of the encoder's and the head's first layer, once per agent
            self.register_buffer("enc_agent", net.per_agent(net.enc_embed)[..., 0, :].contiguous().clone())
            self.register_buffer("head_agent", net.per_agent(net.head_in[1])[..., 0, :].contiguous().clone())
        self.enc_obs = _Affine(net.enc_obs)
        self.enc_out = _Mlp(net.enc_out)
        self.head_msg = _Affine(net.head_in[0])
        self.hops = net.hops
        if self.hops:
            self.head_pooled = _Affine(net.head_in[2])
            self.head_heard = _Affine(net.head_in[3])
        self.head = _Mlp(net.head)
        self.message_dim = net.message_dim
        self.residual = policy.residual  # a residual run's base curve at the own voltage, or None
        # the envelope (float64, as SafetyEnvelope computes it)
        self.envelope = deployed.config
        self.v_min_pu, self.v_max_pu = deployed.v_min_pu, deployed.v_max_pu
        self.v_col, self.p_col, self.qa_col = deployed.own_columns
        stats = deployed.statistics
        self.has_handover = stats is not None
        if stats is not None:
            mean, std, test = stats
            self.register_buffer("ho_mean", mean.to(torch.float64).expand(n, d).contiguous().clone())
            self.register_buffer("ho_std", std.to(torch.float64).expand(n, d).contiguous().clone())
            self.register_buffer("ho_test", test.to(torch.bool).expand(n, d).contiguous().clone())
        ratings = deployed.rating_range
        self.has_ratings = ratings is not None
        if ratings is not None:
            self.register_buffer("ho_rating_low", ratings[0].to(torch.float64).contiguous().clone())
            self.register_buffer("ho_rating_high", ratings[1].to(torch.float64).contiguous().clone())

    def normalise(self, obs: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        y = ((obs - self.norm_mean[agent]) / self.norm_std[agent]).clamp(-self.clip, self.clip)
        return y * self.norm_valid[agent]

    def message(self, obs: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        y = self.normalise(obs, agent)
        return self.enc_out(torch.relu(self.enc_obs(y, agent) + self.enc_agent[agent]), agent)

    def action(self, obs: torch.Tensor, agent: torch.Tensor, message: torch.Tensor,
               pooled: torch.Tensor | None, heard: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.head_msg(message, agent)
        per_agent = self.head_agent[agent]
        if self.hops:
            z = z + self.head_pooled(pooled, agent)
            per_agent = per_agent + self.head_heard(heard, agent)
        mean = self.head(torch.relu(z + per_agent), agent)[:, 0]
        if self.residual is not None:
            mean = mean + self.residual(obs).to(mean.dtype)
        a = mean.clamp(-1.0, 1.0).to(torch.float64)
        x = obs.to(torch.float64)
        v, p, qa = 1.0 + x[:, self.v_col], x[:, self.p_col], x[:, self.qa_col]
        if self.has_handover:
            handed = handover(x, self.ho_mean[agent], self.ho_std[agent], self.ho_test[agent],
                              float(self.envelope.handover_z))
        else:
            handed = torch.zeros_like(a, dtype=torch.bool)
        if self.has_ratings:
            handed = handed | rating_outside(p, qa, self.ho_rating_low[agent], self.ho_rating_high[agent])
        a = shield(a, v, p, qa, handed, v_min_pu=self.v_min_pu, v_max_pu=self.v_max_pu, config=self.envelope)
        return a.to(torch.float32), (a * qa).to(torch.float32)


class MessageGraph(nn.Module):
    """``obs [B, D]``, ``agent [B]`` → ``message [B, H]``."""

    def __init__(self, parts: _Parts):
        super().__init__()
        self.parts = parts

    def forward(self, obs: torch.Tensor, agent: torch.Tensor) -> torch.Tensor:
        return self.parts.message(obs, agent)


class ActionGraph(nn.Module):
    """``obs [B, D]``, ``agent [B]``, ``pooled [B, κ·H]``, ``heard [B, κ]`` → ``action [B]``,
    ``q_mvar [B]`` (κ = 0: no ``pooled`` and ``heard``)."""

    def __init__(self, parts: _Parts):
        super().__init__()
        self.parts = parts

    def forward(self, obs: torch.Tensor, agent: torch.Tensor, pooled: torch.Tensor | None = None,
                heard: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parts.action(obs, agent, self.parts.message(obs, agent), pooled, heard)


class NetworkGraph(nn.Module):
    """``obs [B, N, D]`` → ``actions [B, N]`` with every message delivered (the pooling a dense
    ``[κ, N, N]`` matrix of 1 / ring size: fine up to a few hundred agents)."""

    def __init__(self, parts: _Parts, graph):
        super().__init__()
        self.parts = parts
        n, k = graph.n_agents, graph.hops
        ring = torch.zeros(k, n, n)
        for i, j, h, _ in graph.links():
            ring[h - 1, i, j] = 1.0
        count = ring.sum(-1, keepdim=True)
        self.register_buffer("pool", ring / count.clamp(min=1.0))
        self.register_buffer("heard", (count[..., 0] > 0).to(torch.float32).T.contiguous())  # [N, κ]
        self.register_buffer("agents", torch.arange(n))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        b, n, d = obs.shape
        agent = self.agents.expand(b, n).reshape(-1)
        x = obs.reshape(-1, d)
        msg = self.parts.message(x, agent)
        pooled = heard = None
        if self.parts.hops:
            m = msg.reshape(b, n, -1)
            pooled = torch.einsum("kij,bjh->bikh", self.pool, m).reshape(b * n, -1)
            heard = self.heard.expand(b, n, self.parts.hops).reshape(b * n, -1)
        a, _ = self.parts.action(x, agent, msg, pooled, heard)
        return a.reshape(b, n)


def export_graphs(deployed, folder: Path) -> dict[str, str]:
    """Write ``message.onnx``, ``action.onnx`` and ``network.onnx`` of a deployed policy (a
    :class:`~gridrl.env.envelope.SafetyEnvelope` around a :class:`~gridrl.marl.policy.Policy`)
    into ``folder``; returns graph name → file name. Each graph is checked with ONNX's checker."""
    import onnx

    policy = deployed.inner
    parts = _Parts(deployed).eval()
    n, d, k, h = len(policy.agents), len(policy.obs_names), parts.hops, parts.message_dim
    obs, agent = torch.zeros(2, d), torch.zeros(2, dtype=torch.int64)
    batch = {0: "batch"}
    action_inputs = (obs, agent) + ((torch.zeros(2, k * h), torch.ones(2, k)) if k else ())
    action_names = ["obs", "agent"] + (["pooled", "heard"] if k else [])
    graphs = {
        "message": (MessageGraph(parts), (obs, agent), ["obs", "agent"], ["message"]),
        "action": (ActionGraph(parts), action_inputs, action_names, ["action", "q_mvar"]),
        "network": (NetworkGraph(parts, policy.graph), (torch.zeros(2, n, d),), ["obs"], ["actions"]),
    }
    files = {}
    for name, (module, args, inputs, outputs) in graphs.items():
        path = folder / f"{name}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its successor
            torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes={x: batch for x in inputs + outputs}, opset_version=OPSET, dynamo=False)
        onnx.checker.check_model(onnx.load(str(path)))
        files[name] = path.name
    return files


def sizes(folder: Path, files: dict[str, str]) -> dict[str, int]:
    """Bytes of each exported graph."""
    return {name: (folder / f).stat().st_size for name, f in files.items()}


def numpy_pool(messages: np.ndarray, receives: list[list[tuple[int, int]]], hops: int,
               delivered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What each agent feeds ``action.onnx`` from the messages it received, computed as the
    description says (:mod:`gridrl.export.protocol`): ``messages [B, N, H]``; ``receives[i]``
    the ``(origin, hop)`` agent i listens to; ``delivered [B, N, N]`` bool, ``[b, i, j]``: the
    message of j reached i this step (default: all). Returns ``pooled [B, N, κ·H]`` and
    ``heard [B, N, κ]``."""
    b, n, h = messages.shape
    pooled = np.zeros((b, n, hops * h), dtype=np.float32)
    heard = np.zeros((b, n, hops), dtype=np.float32)
    for i, listens in enumerate(receives):
        for hop in range(1, hops + 1):
            ring = [j for j, hj in listens if hj == hop]
            if not ring:
                continue
            got = np.ones((b, len(ring)), dtype=bool) if delivered is None else delivered[:, i, ring]
            count = got.sum(1)
            total = (messages[:, ring, :] * got[..., None]).sum(1)
            pooled[:, i, (hop - 1) * h:hop * h] = total / np.maximum(count, 1)[:, None]
            heard[:, i, hop - 1] = count / len(ring)
    return pooled, heard


class DeployedAgents:
    """An export run as the inverters run it: every agent computes its message with
    ``message.onnx``, pools the messages that reached it as ``policy.json`` says
    (:func:`numpy_pool`) and acts with ``action.onnx``. What the tests and the benchmark check
    the export with; ``threads``: onnxruntime's intra-op threads (1: one core)."""

    def __init__(self, folder: str | Path, *, threads: int = 1):
        import json

        import onnxruntime as ort

        folder = Path(folder)
        self.description = json.loads((folder / "policy.json").read_text(encoding="utf-8"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        files = {name: g["file"] for name, g in self.description["graphs"].items()}
        self.sessions = {name: ort.InferenceSession(str(folder / f), opts, providers=["CPUExecutionProvider"])
                         for name, f in files.items()}
        index = {a["name"]: a["index"] for a in self.description["agents"]}
        self.receives = [[(index[r["from"]], r["hop"]) for r in a["receives"]] for a in self.description["agents"]]
        self.hops = self.description["messages"]["hops"]

    def act(self, obs: np.ndarray, delivered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``actions [B, N]`` and ``q_mvar [B, N]`` for observations ``[B, N, D]``; ``delivered
        [B, N, N]`` bool: the message of j reached i (default: every one)."""
        b, n, d = obs.shape
        x = np.ascontiguousarray(obs, dtype=np.float32).reshape(b * n, d)
        agent = np.tile(np.arange(n, dtype=np.int64), b)
        msg = self.sessions["message"].run(None, {"obs": x, "agent": agent})[0]
        feed = {"obs": x, "agent": agent}
        if self.hops:
            pooled, heard = numpy_pool(msg.reshape(b, n, -1), self.receives, self.hops, delivered)
            feed.update(pooled=pooled.reshape(b * n, -1), heard=heard.reshape(b * n, -1))
        action, q_mvar = self.sessions["action"].run(None, feed)
        return action.reshape(b, n), q_mvar.reshape(b, n)

    def agent_step(self, obs: np.ndarray, agent: int, pooled: np.ndarray | None = None,
                   heard: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """One agent's step as its inverter computes it (batch 1): its message and its action."""
        x = np.ascontiguousarray(obs, dtype=np.float32).reshape(1, -1)
        a = np.array([agent], dtype=np.int64)
        msg = self.sessions["message"].run(None, {"obs": x, "agent": a})[0]
        feed = {"obs": x, "agent": a}
        if self.hops:
            feed.update(pooled=pooled.reshape(1, -1).astype(np.float32), heard=heard.reshape(1, -1).astype(np.float32))
        return msg[0], float(self.sessions["action"].run(None, feed)[0][0])
